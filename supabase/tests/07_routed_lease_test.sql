-- A routed task's summary and reports follow its lease (the system that finished it after a
-- reclaim is the one shown; the late writes of the system that lost the lease are kept as
-- stale), and its origin cancels, retries and re-pins it through the central.
begin;
create extension if not exists pgtap with schema extensions;
select plan(34);

create function pg_temp.as_system(p_sub text, p_owner text default 'f1') returns void
language sql as $$
  select set_config('request.jwt.claims', jsonb_build_object('sub',
    '00000000-0000-0000-0000-0000000000' || p_sub, 'role', 'authenticated', 'app_metadata',
    jsonb_build_object('role', 'system', 'owner', '00000000-0000-0000-0000-0000000000' || p_owner))::text,
    true)
$$;
-- Read as the test's owner (RLS would hide a task from a system that lost its lease).
create function pg_temp.sys(p_name text) returns uuid language sql security definer as $$
  select system_id from private.systems where name = p_name
$$;
create function pg_temp.task(p_key text) returns private.routed_tasks language sql
security definer as $$
  select * from private.routed_tasks where idempotency_key = p_key
$$;
-- One batch of `p_stream` items, answered by api.ingest_batch.
create function pg_temp.ingest(p_stream text, p_items jsonb) returns jsonb language sql as $$
  select api.ingest_batch(jsonb_build_object('batch_id', gen_random_uuid(), 'lane', 'urgent',
    'streams', jsonb_build_object(p_stream, p_items)))
$$;
create function pg_temp.summary(p_task uuid, p_version integer, p_state text) returns jsonb
language sql as $$
  select jsonb_build_object('task_id', p_task, 'version', p_version, 'state', p_state,
    'title', 'routed work', 'attempts', 1, 'cost_usd', p_version,
    'created_at', '2026-01-01T00:00:00Z', 'updated_at', '2026-01-01T00:00:00Z')
$$;
create function pg_temp.report(p_task uuid, p_version integer, p_summary text) returns jsonb
language sql as $$
  select jsonb_build_object('task_id', p_task, 'attempt', 1, 'version', p_version,
    'verdict', 'ok', 'summary', p_summary, 'created_at', '2026-01-01T00:00:00Z')
$$;
grant execute on all functions in schema pg_temp to authenticated;

update private.routing_settings set offer_s = 0, backoff_base_s = 0;
set local role authenticated;
select pg_temp.as_system('a1');
select api.enroll('alpha', 2, '0.1.0');
select api.heartbeat('{"running": 0}');
select pg_temp.as_system('b1');
select api.enroll('beta', 2, '0.1.0');
select api.heartbeat('{"running": 0}');
select api.register_contexts(1, '[{"repo_url": "https://github.com/org/app", "path": "/b"}]');
select pg_temp.as_system('c1');
select api.enroll('gamma', 2, '0.1.0');
select api.heartbeat('{"running": 0}');
select pg_temp.as_system('d1', 'f2');
select api.enroll('delta', 2, '0.1.0');
select api.heartbeat('{"running": 0}');

-- Issue 27, item 1: beta runs the task and reports it, loses its lease, gamma finishes it.
select pg_temp.as_system('a1');
select api.submit_task('{"idempotency_key": "r:1", "title": "routed work", "repo_url": "https://github.com/org/app"}');
select pg_temp.as_system('b1');
select is(jsonb_array_length(api.claim(1) -> 'claimed'), 1, 'beta claims the task');
select is(
  pg_temp.ingest('task_summary', jsonb_build_array(
    pg_temp.summary((pg_temp.task('r:1')).task_id, 7, 'executing'))) -> 'accepted',
  '1', 'the holder''s summary is accepted');
select is(
  pg_temp.ingest('report', jsonb_build_array(
    pg_temp.report((pg_temp.task('r:1')).task_id, 1, 'beta''s half'))) -> 'accepted',
  '1', 'the holder''s report is accepted');
reset role;
update private.routed_tasks set lease_expires_at = now() - interval '1 second'
 where idempotency_key = 'r:1';
select is(private.reap() -> 'requeued', '1', 'beta''s lease runs out: the task is queued again');
set local role authenticated;
select pg_temp.as_system('c1');
select api.register_contexts(1, '[{"repo_url": "https://github.com/org/app", "path": "/c"}]');
select is(jsonb_array_length(api.claim(1) -> 'claimed'), 1, 'gamma claims it');
create temp table gamma_summary as
  select pg_temp.ingest('task_summary', jsonb_build_array(
    pg_temp.summary((pg_temp.task('r:1')).task_id, 2, 'complete'))) as answer;
select is((select answer -> 'rejected' from gamma_summary), '[]',
  'the new holder''s summary is not refused as another system''s');
select is(
  (select row(s.name, t.state, t.version)::text from private.task_summaries t
     join private.systems s using (system_id) where t.task_id = (pg_temp.task('r:1')).task_id),
  '(gamma,complete,2)',
  'it replaces the summary of the system that lost the lease, whatever its version');
select is(
  pg_temp.ingest('report', jsonb_build_array(
    pg_temp.report((pg_temp.task('r:1')).task_id, 1, 'gamma''s result'))) -> 'rejected',
  '[]', 'the new holder''s report of the same attempt number is not refused');
select is(
  (select array_agg(s.name || ': ' || r.summary) from private.reports r
     join private.systems s using (system_id) where r.task_id = (pg_temp.task('r:1')).task_id),
  array['gamma: gamma''s result'], 'the reports hold the result of the system that finished it');
select is(
  pg_temp.ingest('alert', jsonb_build_array(jsonb_build_object(
    'alert_id', gen_random_uuid(), 'version', 1, 'severity', 'warning', 'kind', 'stalled',
    'message', 'slow', 'task_id', (pg_temp.task('r:1')).task_id,
    'created_at', '2026-01-01T00:00:00Z'))) -> 'rejected',
  '[]', 'an alert of the new holder about the task is accepted');

-- beta's late writes (it had not heard of the reclaim) are kept as stale, never applied.
select pg_temp.as_system('b1');
create temp table beta_late as
  select pg_temp.ingest('task_summary', jsonb_build_array(
    pg_temp.summary((pg_temp.task('r:1')).task_id, 9, 'cancelled'))) as answer;
select is((select answer -> 'rejected' from beta_late), '[]',
  'the late summary of the system that lost the lease is not an error for it');
select pg_temp.ingest('report', jsonb_build_array(
  pg_temp.report((pg_temp.task('r:1')).task_id, 2, 'beta''s late result')));
reset role;
select is(
  (select row(s.name, t.state, t.version)::text from private.task_summaries t
     join private.systems s using (system_id) where t.task_id = (pg_temp.task('r:1')).task_id),
  '(gamma,complete,2)', 'the late summary does not overwrite the holder''s');
select is(
  (select array_agg(s.name || ': ' || r.summary) from private.reports r
     join private.systems s using (system_id) where r.task_id = (pg_temp.task('r:1')).task_id),
  array['gamma: gamma''s result'], 'the late report is not applied');
select is(
  (select array_agg(s.name || ' ' || a.call || ' ' || coalesce(a.payload ->> 'state',
                    a.payload ->> 'summary') order by a.id)
     from private.stale_attempts a join private.systems s using (system_id)
    where a.task_id = (pg_temp.task('r:1')).task_id),
  array['beta report beta''s half', 'beta summary cancelled', 'beta report beta''s late result'],
  'what beta wrote for its lost attempt is kept as stale');
select is(
  (select row(system_name, state)::text from api.fleet_tasks
    where task_id = (pg_temp.task('r:1')).task_id),
  '(gamma,complete)', 'fleet_tasks shows the task complete on the system that finished it');
set local role authenticated;

-- Another owner's system gets no say; a task that was never routed keeps its first writer.
select pg_temp.as_system('d1', 'f2');
select is(
  pg_temp.ingest('task_summary', jsonb_build_array(
    pg_temp.summary((pg_temp.task('r:1')).task_id, 99, 'failed'))) -> 'rejected' -> 0 ->> 'code',
  '42501', 'a system of another owner cannot write a routed task''s summary');
select pg_temp.as_system('a1');
select pg_temp.ingest('task_summary', jsonb_build_array(
  pg_temp.summary('0193a000-0000-7000-8000-00000000aaaa', 1, 'queued')));
select pg_temp.as_system('b1');
select is(
  pg_temp.ingest('task_summary', jsonb_build_array(
    pg_temp.summary('0193a000-0000-7000-8000-00000000aaaa', 2, 'failed'))) -> 'rejected' -> 0 ->> 'code',
  '42501', 'a local task''s summary still belongs to the system that wrote it first');

-- Issue 27, item 2: the origin cancels a running task.
select pg_temp.as_system('a1');
select api.submit_task('{"idempotency_key": "r:2", "title": "to cancel", "repo_url": "https://github.com/org/app"}');
select pg_temp.as_system('b1');
select is(jsonb_array_length(api.claim(1) -> 'claimed'), 1, 'beta claims the second task');
create temp table lease_b as
  select jsonb_build_array(jsonb_build_object('task_id', t.task_id,
           'fencing_token', t.fencing_token)) as leases
    from pg_temp.task('r:2') t;
grant select on lease_b to authenticated;
select pg_temp.as_system('d1', 'f2');
select throws_ok(
  format('select api.cancel_routed(%L, %L)', (pg_temp.task('r:2')).task_id, 'mine now'),
  '42501', format('routed task %s belongs to another owner', (pg_temp.task('r:2')).task_id),
  'a system of another owner cannot cancel the task');
select pg_temp.as_system('a1');
select is(
  (select jsonb_build_array(c ->> 'status', c ->> 'state')
     from api.cancel_routed((pg_temp.task('r:2')).task_id, 'not needed') c),
  '["applied", "cancelled"]', 'the origin cancels the task');
select is(
  (select row(t.state, t.lease_owner = pg_temp.sys('beta'), t.lease_expires_at, a.outcome)::text
     from private.routed_tasks t join private.task_attempts a using (task_id)
    where t.idempotency_key = 'r:2'),
  '(cancelled,t,,cancelled)',
  'the lease ends at once and its attempt ends cancelled; the holder stays the task''s system');
select pg_temp.as_system('b1');
select is(
  (select jsonb_build_array(r -> 'reason', r -> 'message')
     from jsonb_array_elements(api.heartbeat(jsonb_build_object('leases',
            (select leases from lease_b))) -> 'revoked') r),
  '["cancelled", "cancelled by alpha: not needed"]',
  'the holder''s next heartbeat revokes the lease as cancelled, with the origin''s reason');
select is(
  api.complete((pg_temp.task('r:2')).task_id, (pg_temp.task('r:2')).fencing_token,
               '{"status": "done"}') ->> 'status',
  'stale_lease', 'a result after the cancel is stale');
select pg_temp.ingest('task_summary', jsonb_build_array(
  pg_temp.summary((pg_temp.task('r:2')).task_id, 4, 'cancelled')));
select is(
  (select row(system_name, state)::text from api.fleet_tasks
    where task_id = (pg_temp.task('r:2')).task_id),
  '(beta,cancelled)', 'the holder''s summary of the cancelled task is shown');
select pg_temp.as_system('a1');
select is(api.cancel_routed((pg_temp.task('r:2')).task_id) ->> 'status', 'unchanged',
  'cancelling a cancelled task changes nothing');
select is(
  (select t ->> 'state' from jsonb_array_elements(api.routed_status() -> 'tasks') t
    where t ->> 'title' = 'to cancel'),
  'cancelled', 'the origin''s view shows it cancelled');

-- Retry from any system of the owner, with a fresh attempt budget.
select pg_temp.as_system('c1');
select is(
  (select jsonb_build_array(c ->> 'status', c ->> 'state', c -> 'max_attempts')
     from api.retry_routed((pg_temp.task('r:2')).task_id, 'try again') c),
  '["applied", "queued", 4]', 'a cancelled task is queued again with a fresh budget');
select is(
  (select row(lease_owner, result, last_error)::text from pg_temp.task('r:2')),
  '(,,"retried by gamma: try again")', 'the retried task has no holder and no result');
select is(api.retry_routed((pg_temp.task('r:2')).task_id) ->> 'status', 'unchanged',
  'a queued task is not retried');

-- A new pin takes the lease back from a holder that does not match it, spending no attempt.
select pg_temp.as_system('b1');
select is(jsonb_array_length(api.claim(1) -> 'claimed'), 1, 'beta claims the retried task');
select pg_temp.as_system('a1');
select is(
  (select jsonb_build_array(c ->> 'state', c -> 'max_attempts', c ->> 'pinned_system' =
                            pg_temp.sys('gamma')::text)
     from api.pin_routed((pg_temp.task('r:2')).task_id, 'gamma') c),
  '["queued", 5, true]', 'pinned elsewhere, the task is queued again for its new system');
create temp table lease_b2 as
  select jsonb_build_array(jsonb_build_object('task_id', a.task_id,
           'fencing_token', a.fencing_token)) as leases
    from private.task_attempts a
   where a.task_id = (pg_temp.task('r:2')).task_id order by a.attempt desc limit 1;
grant select on lease_b2 to authenticated;
select pg_temp.as_system('b1');
select is(
  (select jsonb_agg(r -> 'reason')
     from jsonb_array_elements(api.heartbeat(jsonb_build_object('leases',
            (select leases from lease_b2))) -> 'revoked') r),
  '["repinned"]', 'the old holder''s heartbeat revokes its lease as repinned');
select is(api.claim(1) -> 'claimed', '[]', 'the old holder cannot claim it back');
select pg_temp.as_system('c1');
select is(jsonb_path_query_array(api.claim(1), '$.claimed[*].title'), '["to cancel"]',
  'the new pin claims it');

select * from finish();
rollback;
