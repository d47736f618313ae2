-- GET /cwom/issues/{issue_id}/context-packets: the packets made for an issue (by `for_issue`), newest first.
select document
  from cwom_context_packets
 where for_issue_id = $1
 order by created_position desc
 limit $2 offset $3
