-- GET a ConstraintSnapshot by id.
select document from cwom_constraint_snapshots where id = $1
