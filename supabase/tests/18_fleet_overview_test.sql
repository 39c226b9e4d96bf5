-- The fleet overview a node's dashboard reads: every system of the caller's owner with its
-- latest health, tasks per state per system and the fleet's open alerts; never another
-- owner's systems; nothing for `anon`.
begin;
create extension if not exists pgtap with schema extensions;
select plan(6);

create function pg_temp.as_system(p_sub text, p_owner text default 'f1') returns void
language sql as $$
  select set_config('request.jwt.claims', jsonb_build_object('sub',
    '00000000-0000-0000-0000-0000000000' || p_sub, 'role', 'authenticated', 'app_metadata',
    jsonb_build_object('role', 'system', 'owner', '00000000-0000-0000-0000-0000000000' || p_owner))::text,
    true)
$$;
create function pg_temp.ship(p_batch text, p_streams jsonb) returns jsonb
language sql as $$
  select api.ingest_batch(jsonb_build_object('batch_id', p_batch, 'streams', p_streams))
$$;
grant execute on all functions in schema pg_temp to authenticated;

set local role authenticated;
select pg_temp.as_system('a1');
select api.enroll('alpha', 2, '0.1.0');
select pg_temp.as_system('c1', 'f2');
select api.enroll('other-owner', 2, '0.1.0');
select pg_temp.ship('0193a000-0000-7000-8000-0000000000c1', jsonb_build_object(
  'task_summary', jsonb_build_array(jsonb_build_object('task_id',
    '0193a000-0000-7000-8000-0000000000c1', 'version', 1, 'state', 'executing',
    'title', 'theirs', 'profile', 'claude', 'priority', 0, 'attempts', 1, 'max_attempts', 3,
    'created_at', now(), 'updated_at', now()))));
select pg_temp.as_system('b1');
select api.enroll('beta', 3, '0.1.0');
select pg_temp.ship('0193a000-0000-7000-8000-0000000000b1', jsonb_build_object(
  'task_summary', jsonb_build_array(
    jsonb_build_object('task_id', '0193a000-0000-7000-8000-0000000000b1', 'version', 1,
      'state', 'executing', 'title', 'one', 'profile', 'claude', 'priority', 0,
      'attempts', 1, 'max_attempts', 3, 'cost_usd', 0.25, 'created_at', now(),
      'updated_at', now()),
    jsonb_build_object('task_id', '0193a000-0000-7000-8000-0000000000b2', 'version', 1,
      'state', 'executing', 'title', 'two', 'profile', 'claude', 'priority', 0,
      'attempts', 1, 'max_attempts', 3, 'created_at', now(), 'updated_at', now())),
  'alert', jsonb_build_array(jsonb_build_object('alert_id',
    '0193a000-0000-7000-8000-0000000000d1', 'version', 1, 'severity', 'warning',
    'kind', 'stalled', 'message', 'no output for 10 min', 'created_at', now())),
  'health', jsonb_build_array(jsonb_build_object('window_start', now(), 'window_len_s', 60,
    'version', 1, 'metrics', jsonb_build_object('load1', 0.5, 'backlog', 7)))));

select pg_temp.as_system('a1');
select is(
  (select jsonb_agg(s ->> 'name') from jsonb_array_elements(api.fleet_overview() -> 'systems') s),
  '["alpha", "beta"]',
  'a system sees every system of its owner, and only those'
);
select is(
  (select s -> 'health' from jsonb_array_elements(api.fleet_overview() -> 'systems') s
    where s ->> 'name' = 'beta'),
  '{"load1": 0.5, "backlog": 7}',
  'each with its latest health snapshot'
);
select is(
  (select s -> 'repos' from jsonb_array_elements(api.fleet_overview() -> 'systems') s
    where s ->> 'name' = 'beta'),
  '[]',
  'and its repositories'
);
select is(
  api.fleet_overview() -> 'tasks_by_state',
  '[{"state": "executing", "tasks": 2, "system_name": "beta"}]',
  'tasks per state per system, not another owner''s'
);
select is(
  (select jsonb_agg(a ->> 'kind') from jsonb_array_elements(api.fleet_overview() -> 'open_alerts') a),
  '["stalled"]',
  'the open alerts of the fleet'
);

reset role;
set local role anon;
select throws_ok('select api.fleet_overview()', '42501', null, 'anon cannot call it');

select * from finish();
rollback;
