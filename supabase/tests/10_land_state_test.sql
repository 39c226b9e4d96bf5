-- A complete task's land state is stored with its summary and shown by `api.fleet_tasks`; an
-- unknown one is refused naming the item; a landed task is no longer active for the other
-- systems' conflict prediction (`api.fleet_task_files`).
begin;
create extension if not exists pgtap with schema extensions;
select plan(5);

create function pg_temp.as_system(p_sub text) returns void
language sql as $$
  select set_config('request.jwt.claims', jsonb_build_object('sub',
    '00000000-0000-0000-0000-0000000000' || p_sub, 'role', 'authenticated', 'app_metadata',
    jsonb_build_object('role', 'system', 'owner', '00000000-0000-0000-0000-0000000000f1'))::text,
    true)
$$;
create function pg_temp.task(p_id text, p_version int, p_land text) returns jsonb
language sql as $$
  select jsonb_build_object('seq', p_version, 'task_id', p_id, 'version', p_version,
    'state', 'complete', 'title', 'task', 'repo_url', 'https://github.com/org/app',
    'profile', 'claude', 'priority', 0, 'attempts', 1, 'max_attempts', 3,
    'created_at', '2026-01-01T00:00:00Z', 'updated_at', '2026-01-01T00:00:00Z',
    'touched_files', '["src/main.rs"]'::jsonb, 'land_state', p_land)
$$;
create function pg_temp.ship(p_batch text, p_tasks jsonb) returns jsonb
language sql as $$
  select api.ingest_batch(jsonb_build_object('batch_id', p_batch,
    'streams', jsonb_build_object('task_summary', p_tasks)))
$$;
grant execute on all functions in schema pg_temp to authenticated;

set local role authenticated;
select pg_temp.as_system('b1');
select api.enroll('beta', 2, '0.1.0');
select pg_temp.as_system('a1');
select api.enroll('alpha', 2, '0.1.0');

select is(
  pg_temp.ship('0193a000-0000-7000-8000-000000000101', jsonb_build_array(
    pg_temp.task('0193a000-0000-7000-8000-0000000001a1', 1, 'landing'),
    pg_temp.task('0193a000-0000-7000-8000-0000000001a2', 1, null))) ->> 'accepted',
  '2',
  'summaries with and without a land state are accepted'
);
select is(
  (select land_state from api.fleet_tasks where task_id = '0193a000-0000-7000-8000-0000000001a1'),
  'landing',
  'api.fleet_tasks shows the land state'
);
select is(
  (select r ->> 'code' from jsonb_array_elements(
     pg_temp.ship('0193a000-0000-7000-8000-000000000102', jsonb_build_array(
       pg_temp.task('0193a000-0000-7000-8000-0000000001a3', 1, 'flying'))) -> 'rejected') r),
  '22P02',
  'an unknown land state is refused'
);

select pg_temp.as_system('b1');
select is(
  (select jsonb_agg(t ->> 'task_id' order by t ->> 'task_id')
     from jsonb_array_elements(api.fleet_task_files('["https://github.com/org/app"]')) t),
  '["0193a000-0000-7000-8000-0000000001a1", "0193a000-0000-7000-8000-0000000001a2"]',
  'finished tasks not landed are active for the prediction'
);
select pg_temp.as_system('a1');
select pg_temp.ship('0193a000-0000-7000-8000-000000000103', jsonb_build_array(
  pg_temp.task('0193a000-0000-7000-8000-0000000001a1', 2, 'landed')));
select pg_temp.as_system('b1');
select is(
  (select jsonb_agg(t ->> 'task_id')
     from jsonb_array_elements(api.fleet_task_files('["https://github.com/org/app"]')) t),
  '["0193a000-0000-7000-8000-0000000001a2"]',
  'a landed task is not'
);

select * from finish();
rollback;
