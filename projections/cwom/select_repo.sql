-- GET a Repo by id.
select document from cwom_repos where id = $1
