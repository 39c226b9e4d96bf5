-- Row-level security: systems see their own rows, operators the rows of their systems, anon
-- nothing.
begin;
create extension if not exists pgtap with schema extensions;
select plan(16);

-- Systems A and B of operator 1, C of operator 2, each with one task and one alert.
create function pg_temp.enroll_with_task(p_sub text, p_owner text, p_name text, p_task text)
returns void language plpgsql as $$
begin
  perform set_config('request.jwt.claims', jsonb_build_object('sub', p_sub, 'role',
    'authenticated', 'app_metadata', jsonb_build_object('role', 'system', 'owner', p_owner))::text,
    true);
  perform api.enroll(p_name, 2, '0.1.0');
  perform api.ingest_batch(jsonb_build_object('batch_id', gen_random_uuid(), 'streams',
    jsonb_build_object(
      'task_summary', jsonb_build_array(jsonb_build_object('task_id', p_task, 'version', 1,
        'state', 'executing', 'title', p_name || ' task', 'cost_usd', 1.25,
        'created_at', '2026-01-01T00:00:00Z', 'updated_at', '2026-01-01T10:00:00Z')),
      'alert', jsonb_build_array(jsonb_build_object('alert_id', gen_random_uuid(),
        'version', 1, 'severity', 'warning', 'kind', 'stalled', 'message', p_name,
        'created_at', '2026-01-01T00:00:00Z')))));
end
$$;
select pg_temp.enroll_with_task('00000000-0000-0000-0000-0000000000a1',
  '00000000-0000-0000-0000-0000000000f1', 'alpha', '0193a000-0000-7000-8000-0000000000a1');
select pg_temp.enroll_with_task('00000000-0000-0000-0000-0000000000b1',
  '00000000-0000-0000-0000-0000000000f1', 'beta', '0193a000-0000-7000-8000-0000000000b1');
select pg_temp.enroll_with_task('00000000-0000-0000-0000-0000000000c1',
  '00000000-0000-0000-0000-0000000000f2', 'gamma', '0193a000-0000-7000-8000-0000000000c1');

-- As system A.
set local role authenticated;
set local request.jwt.claims to '{"sub": "00000000-0000-0000-0000-0000000000a1", "role": "authenticated", "app_metadata": {"role": "system", "owner": "00000000-0000-0000-0000-0000000000f1"}}';
select is((select array_agg(name) from private.systems), array['alpha'],
  'a system sees its own system row only');
select is((select array_agg(title) from private.task_summaries), array['alpha task'],
  'a system sees its own tasks only');
select is((select array_agg(message) from api.open_alerts), array['alpha'],
  'a system sees its own alerts only');
reset role;
create temp table beta as select system_id from private.systems where name = 'beta';
grant select on beta to authenticated;
set local role authenticated;
select throws_ok(
  $$ insert into private.task_summaries (task_id, system_id, version, state, title, created_at,
       updated_at)
     select gen_random_uuid(), system_id, 1, 'queued', 'forged', now(), now() from beta $$,
  '42501', null,
  'a system cannot insert a row for another system'
);
select is_empty(
  $$ update private.task_summaries set title = 'hijacked'
      where task_id = '0193a000-0000-7000-8000-0000000000b1' returning task_id $$,
  'a system cannot update another system''s row'
);
select is(
  api.ingest_batch('{"batch_id": "0193a000-0000-7000-8000-00000000aaaa", "streams": {"task_summary": [{"task_id": "0193a000-0000-7000-8000-0000000000b1", "version": 9, "state": "cancelled", "title": "hijacked", "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}]}}') -> 'rejected' -> 0 ->> 'code',
  '42501',
  'ingest rejects an item about another system''s task'
);
select throws_ok(
  $$ delete from private.task_summaries $$, '42501', null,
  'a system cannot delete rows'
);

-- As operator 1.
set local request.jwt.claims to '{"sub": "00000000-0000-0000-0000-0000000000f1", "role": "authenticated", "app_metadata": {"role": "operator"}}';
select is((select array_agg(name order by name) from api.fleet_systems), array['alpha', 'beta'],
  'an operator sees all of their systems and no one else''s');
select is((select array_agg(title order by title) from api.fleet_tasks),
  array['alpha task', 'beta task'],
  'an operator sees the tasks of their systems, none altered by another system');
select is(
  (select array_agg(system_name || ' ' || state || ' ' || tasks order by system_name)
     from api.tasks_by_state),
  array['alpha executing 1', 'beta executing 1'],
  'tasks by state covers the operator''s systems');
select is(
  (select array_agg(system_name || ' ' || day || ' ' || cost_usd order by system_name)
     from api.daily_cost),
  array['alpha 2026-01-01 1.25', 'beta 2026-01-01 1.25'],
  'cost per system and day covers the operator''s systems');
select is_empty(
  $$ update private.task_summaries set title = 'edited' returning task_id $$,
  'an operator cannot change their systems'' rows'
);

-- As operator 2, and as an operator without the operator role.
set local request.jwt.claims to '{"sub": "00000000-0000-0000-0000-0000000000f2", "role": "authenticated", "app_metadata": {"role": "operator"}}';
select is((select array_agg(name) from api.fleet_systems), array['gamma'],
  'another operator sees only their own system');
set local request.jwt.claims to '{"sub": "00000000-0000-0000-0000-0000000000f1", "role": "authenticated", "app_metadata": {}}';
select is_empty($$ select * from api.fleet_systems $$,
  'an owner whose app_metadata does not say operator sees nothing');

-- As anon.
reset role;
set local role anon;
reset request.jwt.claims;
select throws_ok($$ select * from private.task_summaries $$, '42501', null,
  'anon cannot read the tables');
select throws_ok($$ select api.heartbeat('{}') $$, '42501', null,
  'anon cannot call the api');

select * from finish();
rollback;
