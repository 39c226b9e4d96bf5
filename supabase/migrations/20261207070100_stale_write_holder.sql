-- A `stale_lease` answer names the system the task went to (issue 27, item 4), so the system
-- whose late write it refuses can say "result discarded: lease lost to <system>": `holder` is
-- the system of the task's latest attempt when that is not the caller (absent otherwise, for
-- example while the task waits in the queue again). Otherwise as in `..._routing.sql`.
create or replace function private.stale_write(p_task uuid, p_system uuid, p_token bigint,
                                               p_call text, p_payload jsonb) returns jsonb
language sql
set search_path = ''
as $$
  insert into private.stale_attempts (task_id, system_id, fencing_token, call, payload)
  values (p_task, p_system, p_token, p_call, p_payload);
  select jsonb_strip_nulls(jsonb_build_object(
           'task_id', p_task, 'status', 'stale_lease', 'state', r.state,
           'fencing_token', p_token,
           'holder', (select s.name from private.task_attempts a
                        join private.systems s on s.system_id = a.system_id
                       where a.task_id = p_task and a.system_id <> p_system
                         and a.attempt = (select max(b.attempt) from private.task_attempts b
                                           where b.task_id = p_task))))
    from private.routed_tasks r where r.task_id = p_task;
$$;
revoke execute on function private.stale_write(uuid, uuid, bigint, text, jsonb) from public;
