-- GET a Run by id.
select document from cwom_runs where id = $1
