-- A task pinned to a draining system waits with the reason `pinned_system_draining`, not
-- `all_busy`: at submission, at each reaper pass, and when the drain starts after it was
-- queued; the reason goes once the drain ends. A late write refused as `stale_lease` names
-- the system the task went to.
begin;
create extension if not exists pgtap with schema extensions;
select plan(8);

create function pg_temp.as_system(p_sub text, p_owner text default 'f1') returns void
language sql as $$
  select set_config('request.jwt.claims', jsonb_build_object('sub',
    '00000000-0000-0000-0000-0000000000' || p_sub, 'role', 'authenticated', 'app_metadata',
    jsonb_build_object('role', 'system', 'owner', '00000000-0000-0000-0000-0000000000' || p_owner))::text,
    true)
$$;
create function pg_temp.task(p_key text) returns private.routed_tasks language sql
security definer as $$
  select * from private.routed_tasks where idempotency_key = p_key
$$;
grant execute on all functions in schema pg_temp to authenticated;

set local role authenticated;
select pg_temp.as_system('a1');
select api.enroll('alpha', 2, '0.1.0');
select api.heartbeat('{"running": 0}');
select pg_temp.as_system('b1');
select api.enroll('beta', 2, '0.1.0');
select api.heartbeat('{"running": 0}');
select api.register_contexts(1, '[{"repo_url": "https://github.com/org/app", "path": "/src/app"}]');
select api.drain(true);

select pg_temp.as_system('a1');
select api.submit_task('{"idempotency_key": "p:1", "title": "pinned", "pin": "beta",
                         "repo_url": "https://github.com/org/app"}');
select is((pg_temp.task('p:1')).reason, 'pinned_system_draining',
  'a task pinned to a draining system says so at submission');

reset role;
create temp table before_reap as select updated_at from private.routed_tasks
 where idempotency_key = 'p:1';
select private.reap(true);
select is((pg_temp.task('p:1')).reason, 'pinned_system_draining',
  'the reaper''s pass keeps the drain as the reason');
select is((pg_temp.task('p:1')).updated_at, (select updated_at from before_reap),
  'a pass that finds the same reason does not report the task again');

set local role authenticated;
select pg_temp.as_system('a1');
select api.drain(false, 'beta');
select is((pg_temp.task('p:1')).reason, null, 'the end of the drain clears the reason');

-- beta busy (no free slot): a task pinned to it is all_busy until beta drains.
select pg_temp.as_system('b1');
select api.heartbeat('{"running": 2, "slots": 2}');
select pg_temp.as_system('a1');
select api.submit_task('{"idempotency_key": "p:2", "title": "pinned, busy", "pin": "beta",
                         "repo_url": "https://github.com/org/app"}');
select is((pg_temp.task('p:2')).reason, 'all_busy', 'pinned to a busy system: all_busy');
select api.drain(true, 'beta');
select is((pg_temp.task('p:2')).reason, 'pinned_system_draining',
  'a drain that starts later renames the reason of the tasks pinned to it');

-- Not pinned: a draining system is busy as before.
select api.submit_task('{"idempotency_key": "p:3", "title": "anywhere",
                         "repo_url": "https://github.com/org/app"}');
select is((pg_temp.task('p:3')).reason, 'all_busy', 'an unpinned task still says all_busy');

-- gamma claims p:3, goes silent past its lease; beta (drained no more) takes it; gamma's late
-- result is stale and names beta.
select pg_temp.as_system('c1');
select api.enroll('gamma', 2, '0.1.0');
select api.heartbeat('{"running": 0}');
select api.register_contexts(1, '[{"repo_url": "https://github.com/org/app", "path": "/app"}]');
create temp table gamma_claim as select api.claim(1) -> 'claimed' -> 0 as task;
reset role;
-- No offer window: beta may claim the task whether it or gamma ranks first (random system ids break their tie).
update private.routing_settings set backoff_base_s = 0, offer_s = 0;
update private.routed_tasks set lease_expires_at = now() - interval '1 second'
 where task_id = (select (task ->> 'task_id')::uuid from gamma_claim);
select private.reap();
set local role authenticated;
select pg_temp.as_system('a1');
select api.drain(false, 'beta');
select pg_temp.as_system('b1');
select api.heartbeat('{"running": 0, "slots": 5}');
select api.claim(5);
select pg_temp.as_system('c1');
select is(
  api.complete((select (task ->> 'task_id')::uuid from gamma_claim),
               (select (task ->> 'fencing_token')::bigint from gamma_claim),
               '{"status": "done"}') - 'task_id' - 'fencing_token',
  '{"status": "stale_lease", "state": "leased", "holder": "beta"}',
  'a late result is stale and names the system that holds the task now');

select * from finish();
rollback;
