-- Routing: submit (idempotent), claim (repository, pin, drain, best system), leases renewed by
-- the heartbeat, fencing tokens, the reaper, unroutable reasons and alerts, presence, RLS.
begin;
create extension if not exists pgtap with schema extensions;
select plan(50);

-- Systems A (no repository), B (has org/app), C (has org/lib), all of operator 1; D of
-- operator 2 with org/app.
create function pg_temp.as_system(p_sub text, p_owner text default 'f1') returns void
language sql as $$
  select set_config('request.jwt.claims', jsonb_build_object('sub',
    '00000000-0000-0000-0000-0000000000' || p_sub, 'role', 'authenticated', 'app_metadata',
    jsonb_build_object('role', 'system', 'owner', '00000000-0000-0000-0000-0000000000' || p_owner))::text,
    true)
$$;
create function pg_temp.sys(p_name text) returns uuid language sql as $$
  select system_id from private.systems where name = p_name
$$;
create function pg_temp.task(p_key text) returns private.routed_tasks language sql as $$
  select * from private.routed_tasks where idempotency_key = p_key
$$;
grant execute on all functions in schema pg_temp to authenticated;

-- R-1
select is(
  array[private.normalize_repo_url('git@github.com:org/app.git'),
        private.normalize_repo_url(' ssh://git@GitHub.com:22/org/app.git/ '),
        private.normalize_repo_url('https://user:secret@gitlab.example.com/group/sub/app.git'),
        private.normalize_repo_url('/srv/git/app.git'),
        private.normalize_repo_url('file:///srv/git/app.git')],
  array['https://github.com/org/app', 'https://github.com/org/app',
        'https://gitlab.example.com/group/sub/app', '/srv/git/app.git',
        'file:///srv/git/app.git'],
  'repository URLs normalize as the node''s repo_url.rs does'
);
set local role authenticated;
select pg_temp.as_system('a1');
select api.enroll('alpha', 2, '0.1.0');
select api.heartbeat('{"running": 0}');
select pg_temp.as_system('b1');
select api.enroll('beta', 2, '0.1.0');
select api.heartbeat('{"running": 0}');
select api.register_contexts(1, '[{"repo_url": "git@GitHub.com:org/app.git", "path": "/src/app"}]');
select pg_temp.as_system('c1');
select api.enroll('gamma', 2, '0.1.0');
select api.heartbeat('{"running": 0}');
select api.register_contexts(1, '[{"repo_url": "https://github.com/org/lib", "path": "/src/lib"}]');
select pg_temp.as_system('d1', 'f2');
select api.enroll('delta', 2, '0.1.0');
select api.heartbeat('{"running": 0}');
select api.register_contexts(1, '[{"repo_url": "https://github.com/org/app", "path": "/app"}]');

reset role;
select is(
  (select repo_url from private.contexts where system_id = pg_temp.sys('beta')),
  'https://github.com/org/app',
  'contexts are stored normalized'
);
set local role authenticated;

-- Submit, idempotent.
select pg_temp.as_system('a1');
create temp table first_submit as select api.submit_task('{"idempotency_key": "a:1", "title": "fix app", "prompt": "fix it", "repo_url": "https://github.com/org/app.git", "profile": "claude", "verify": "cargo test", "payload": {"base": "main"}}') as answer;
select is((select answer ->> 'status' from first_submit), 'queued', 'a new task is queued');
select is(
  (select row(repo_url, state, reason, attempts, max_attempts, payload)::text
     from pg_temp.task('a:1')),
  '(https://github.com/org/app,queued,,0,3,"{""base"": ""main""}")',
  'the task is stored with its repository normalized and no reason, since beta can take it'
);
select is(
  api.submit_task('{"idempotency_key": "a:1", "title": "another title"}'),
  (select answer || '{"status": "duplicate"}' from first_submit),
  'a replay of the key returns the stored task, whatever else it carries'
);
select is((select count(*)::integer from private.routed_tasks), 1, 'a replay stores nothing');
select throws_ok(
  $$ select api.submit_task('{"title": "no key"}') $$, '22023', 'idempotency_key is missing',
  'a task without an idempotency key is refused'
);
select throws_ok(
  $$ select api.submit_task('{"idempotency_key": "a:x", "title": "t", "pin": "delta"}') $$,
  '22023', 'unknown system delta',
  'a pin names a system of the same owner'
);

-- Claim only where the repository is.
select pg_temp.as_system('c1');
select is(api.claim(5) -> 'claimed', '[]', 'a system without the repository claims nothing');
select pg_temp.as_system('d1', 'f2');
select is(api.claim(5) -> 'claimed', '[]',
  'a system of another owner claims nothing, even with the repository');
select pg_temp.as_system('a1');
select is(api.claim(5) -> 'claimed', '[]', 'the origin without the repository claims nothing');
select pg_temp.as_system('b1');
create temp table claim_b as select api.claim(5) as answer;
grant select on claim_b to authenticated;
select is(
  (select jsonb_path_query_array(answer, '$.claimed[*].title') from claim_b),
  '["fix app"]',
  'the system with the repository claims it'
);
select is(
  (select row(state, lease_owner = pg_temp.sys('beta'), attempts, fencing_token is not null,
              lease_expires_at = now() + interval '90 seconds')::text
     from pg_temp.task('a:1')),
  '(leased,t,1,t,t)',
  'the claim is a lease of 90 s with a fencing token and one attempt'
);
select is(
  (select answer -> 'claimed' -> 0 -> 'fencing_token' from claim_b),
  to_jsonb((pg_temp.task('a:1')).fencing_token),
  'the claim answers the fencing token'
);
select is(api.claim(5) -> 'claimed', '[]', 'a leased task is not claimed again');

-- Heartbeat renews, reports revoked leases and work waiting.
select is(
  (select jsonb_path_query_array(api.heartbeat(jsonb_build_object('running', 1, 'leases',
     jsonb_build_array(jsonb_build_object('task_id', t.task_id, 'fencing_token', t.fencing_token),
                       jsonb_build_object('task_id', t.task_id, 'fencing_token', 999999)))),
     '$.revoked[*].reason') from pg_temp.task('a:1') t),
  '["lease_lost"]',
  'a heartbeat revokes a lease the system no longer holds and keeps the one it holds'
);
select is(
  (select local_running from private.systems where name = 'beta'), 0,
  'running counts the routed lease, so no local slot is used'
);

-- Progress and completion with the token; a stale token is recorded, never applied.
select is(
  api.report_progress((pg_temp.task('a:1')).task_id, (pg_temp.task('a:1')).fencing_token,
                      '{"phase": "agent"}') ->> 'status',
  'applied', 'progress with the current token applies');
select is((pg_temp.task('a:1')).state, 'running', 'progress makes the task running');
select is(
  api.complete((pg_temp.task('a:1')).task_id, 424242, '{"status": "done"}') ->> 'status',
  'stale_lease', 'a completion with another token is stale');
select is(
  (select row(t.state, s.call, s.fencing_token)::text from private.stale_attempts s
     join private.routed_tasks t using (task_id)),
  '(running,complete,424242)', 'the stale completion is recorded and not applied');
select is(
  api.complete((pg_temp.task('a:1')).task_id, (pg_temp.task('a:1')).fencing_token,
               '{"status": "done", "summary": "fixed"}') ->> 'status',
  'applied', 'a completion with the current token applies');
select is(
  api.complete((pg_temp.task('a:1')).task_id, (pg_temp.task('a:1')).fencing_token,
               '{"status": "done", "summary": "fixed"}') ->> 'status',
  'duplicate', 'the same completion again is a duplicate');
select is(
  (select row(t.state, t.result ->> 'summary', a.outcome)::text from private.routed_tasks t
     join private.task_attempts a using (task_id)),
  '(done,fixed,done)', 'the task is done once, its attempt ended done');

-- The origin's merged view: where its task ran, its result and attempts.
select pg_temp.as_system('a1');
select is(
  (select jsonb_build_array(t -> 'state', t -> 'executing_name', t -> 'result' -> 'summary',
                            t -> 'attempts' -> 0 -> 'system_name', t -> 'attempts' -> 0 -> 'outcome')
     from jsonb_path_query(api.routed_status(), '$.tasks[*] ? (@.title == "fix app")') t),
  '["done", "beta", "fixed", "beta", "done"]',
  'the origin sees its task done on beta, with the result and the attempt');
select is(
  jsonb_array_length(api.routed_status(now() + interval '1 second') -> 'tasks'), 0,
  'routed_status returns only what changed since the given time');
select is(
  (select array_agg(e ->> 'name' || ' ' || (e ->> 'presence') order by e ->> 'name')
     from jsonb_array_elements(api.list_systems()) e),
  array['alpha online', 'beta online', 'gamma online'],
  'list_systems gives a system the presence of every system of its owner, none of another');

-- Pin: a pinned task waits for its system.
select pg_temp.as_system('a1');
select api.register_contexts(1, '[{"repo_url": "https://github.com/org/app", "path": "/x"}]');
select api.submit_task('{"idempotency_key": "a:2", "title": "pinned", "repo_url": "https://github.com/org/app", "pin": "beta"}');
select is(api.claim(5) -> 'claimed', '[]', 'a task pinned to beta is not claimed by alpha');
select pg_temp.as_system('b1');
select is(jsonb_path_query_array(api.claim(5), '$.claimed[*].title'), '["pinned"]',
  'the pinned system claims it');

-- Drain: a draining system takes no new work.
select pg_temp.as_system('a1');
select api.submit_task('{"idempotency_key": "a:3", "title": "drained", "repo_url": "https://github.com/org/app"}');
select is(api.drain(true, 'beta') - 'system_id', '{"name": "beta", "draining": true}',
  'a sibling can drain beta');
select pg_temp.as_system('b1');
select is(api.claim(5) - 'lease_s', '{"claimed": [], "free_slots": 1, "reason": "draining"}',
  'a draining system claims nothing and says why');
select is(api.heartbeat('{"draining": false}') -> 'draining', 'true',
  'the central drain switch survives the node''s own heartbeat');
select is(api.heartbeat('{}') -> 'offers', '0', 'a draining system is offered nothing');
select api.drain(false);
select is((api.heartbeat('{}') -> 'offers')::integer, 1, 'undrained, it is offered the task');

-- Best system: of two free holders the higher manual priority claims first; the other
-- claims nothing during the offer window.
select api.heartbeat('{"priority": 5}');
select pg_temp.as_system('a1');
select is(api.claim(5) -> 'claimed', '[]',
  'alpha, also free and holding the repository, leaves the task to beta''s higher priority');
select pg_temp.as_system('b1');
select is(jsonb_path_query_array(api.claim(5), '$.claimed[*].title'), '["drained"]',
  'the system with the higher manual priority claims it');

-- Reaper: a silent system's lease is taken back with backoff, and blocked at max attempts.
reset role;
update private.routing_settings set backoff_base_s = 0;
update private.routed_tasks set lease_expires_at = now() - interval '1 second'
 where idempotency_key = 'a:3';
select is(private.reap() -> 'requeued', '1', 'the reaper requeues an expired lease');
select is(
  (select row(t.state, t.lease_expires_at, a.outcome)::text from private.routed_tasks t
     join private.task_attempts a using (task_id) where t.idempotency_key = 'a:3'),
  '(queued,,lease_lost)', 'the task is queued again, its attempt ended lease_lost');
update private.routed_tasks set attempts = max_attempts - 1, queued_since = now() - interval '1 hour'
 where idempotency_key = 'a:3';
set local role authenticated;
select pg_temp.as_system('b1');
create temp table second_claim as select api.claim(1) as answer;
reset role;
update private.routed_tasks set lease_expires_at = now() - interval '1 second'
 where idempotency_key = 'a:3';
select is(private.reap() -> 'blocked', '1', 'at max attempts the reaper blocks the task');
select is(
  (select row(a.kind, a.severity, a.origin, a.system_id = pg_temp.sys('alpha'))::text
     from private.alerts a where a.task_id = (pg_temp.task('a:3')).task_id),
  '(routed_task_blocked,critical,central,t)', 'a blocked task raises a central alert for its origin');
set local role authenticated;
select pg_temp.as_system('b1');
select is(
  api.complete((select (answer -> 'claimed' -> 0 ->> 'task_id')::uuid from second_claim),
               (select (answer -> 'claimed' -> 0 ->> 'fencing_token')::bigint from second_claim),
               '{"status": "done"}') ->> 'status',
  'stale_lease', 'the late result of a lost lease is stale');

-- Unroutable: a visible reason, and an alert after unroutable_alert_s.
select pg_temp.as_system('a1');
select is(
  api.submit_task('{"idempotency_key": "a:4", "title": "nowhere", "repo_url": "https://github.com/org/none"}') ->> 'reason',
  'no_context', 'a task whose repository no system has says no_context');
reset role;
update private.routing_settings set unroutable_alert_s = 0;
update private.systems set last_heartbeat_at = now() - interval '1 hour' where name = 'gamma';
set local role authenticated;
select pg_temp.as_system('a1');
select is(
  api.submit_task('{"idempotency_key": "a:5", "title": "lib", "repo_url": "https://github.com/org/lib"}') ->> 'reason',
  'all_stale', 'a task whose only holder is silent says all_stale');
reset role;
select is(private.reap(true) -> 'alerts', '2', 'the reaper raises an alert per unroutable task');
select is(
  (select array_agg(a.kind || ' ' || t.reason order by t.title) from private.alerts a
     join private.routed_tasks t using (task_id) where a.kind = 'unroutable'),
  array['unroutable all_stale', 'unroutable no_context'], 'the alerts name the unroutable tasks');
select is(private.reap(true) -> 'alerts', '0', 'each unroutable task alerts once');
update private.systems set last_heartbeat_at = now() where name = 'gamma';
select private.reap(true);
select is(
  (select array_agg(t.title || ' ' || coalesce(t.reason, '-') || ' '
                    || (a.resolved_at is not null) order by t.title)
     from private.alerts a join private.routed_tasks t using (task_id)
    where a.kind = 'unroutable'),
  array['lib - true', 'nowhere no_context false'],
  'once its holder is back the task has no reason and its alert is resolved');
update private.systems set last_heartbeat_at = now() - interval '1 hour' where name = 'gamma';

-- Presence.
update private.systems set sync_paused = true where name = 'delta';
select is(
  (select array_agg(name || ' ' || presence || ' ' || coalesce(reason, '-') order by name)
     from api.systems),
  array['alpha online -', 'beta online -', 'delta offline sync_paused',
        'gamma offline stale_heartbeat'],
  'presence says why a system is offline');

-- RLS: gamma sees nothing of alpha's tasks, beta sees those it ran, the operator all.
set local role authenticated;
select pg_temp.as_system('c1');
select is_empty($$ select * from api.routed_tasks $$,
  'a system sees no task it neither originated nor held');
select pg_temp.as_system('b1');
select is((select array_agg(title order by title) from api.routed_tasks),
  array['fix app', 'pinned'], 'a system sees the tasks it held');

select * from finish();
rollback;
