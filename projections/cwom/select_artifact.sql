-- GET an Artifact by id.
select document from cwom_artifacts where id = $1
