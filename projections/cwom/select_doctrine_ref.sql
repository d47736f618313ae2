-- GET a DoctrineRef by id.
select document from cwom_doctrine_refs where id = $1
