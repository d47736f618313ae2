-- GET a ContextPacket by id.
select document from cwom_context_packets where id = $1
