-- GET an Issue by id.
select document from cwom_issues where id = $1
