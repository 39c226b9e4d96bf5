-- A replayed batch answers with the outcome of its first application.
--
-- The node resends a batch whenever it did not read the answer (a timeout, a reset, an answer
-- lost after the commit). The replay answered `duplicate` alone, so the items the first
-- application rejected were acknowledged as if applied, and their reasons were lost. The ledger
-- now keeps the rejected items, and a duplicate answer carries them with the accepted count:
-- `{"batch_id": ..., "status": "duplicate", "accepted": n, "rejected": [...]}`.

alter table private.ingest_ledger
  add column rejected_items jsonb not null default '[]'::jsonb;

-- The body of ingest_batch stays as it is; the exposed function wraps it.
alter function api.ingest_batch(jsonb) rename to ingest_batch_once;
alter function api.ingest_batch_once(jsonb) set schema private;
revoke execute on function private.ingest_batch_once(jsonb) from public, anon, authenticated;

create function api.ingest_batch(p_batch jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_answer jsonb;
  v_ledger private.ingest_ledger;
begin
  v_answer := private.ingest_batch_once(p_batch);
  select * into v_ledger from private.ingest_ledger
   where system_id = private.caller_system()
     and batch_id = (v_answer ->> 'batch_id')::uuid;
  if v_answer ->> 'status' = 'applied' then
    update private.ingest_ledger set rejected_items = v_answer -> 'rejected'
     where system_id = v_ledger.system_id and batch_id = v_ledger.batch_id;
    return v_answer;
  end if;
  return v_answer || jsonb_build_object('accepted', v_ledger.accepted,
                                        'rejected', v_ledger.rejected_items);
end
$$;

revoke execute on function api.ingest_batch(jsonb) from public, anon;
grant execute on function api.ingest_batch(jsonb) to authenticated;
