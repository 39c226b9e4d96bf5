-- Conflict prediction across systems: a task summary's `touched_files` are stored (at most
-- 200), and `api.fleet_task_files` answers a system the active tasks of the same repositories
-- on the other systems of its owner, never its own, another owner's or ended ones.
begin;
create extension if not exists pgtap with schema extensions;
select plan(7);

create function pg_temp.as_system(p_sub text, p_owner text default 'f1') returns void
language sql as $$
  select set_config('request.jwt.claims', jsonb_build_object('sub',
    '00000000-0000-0000-0000-0000000000' || p_sub, 'role', 'authenticated', 'app_metadata',
    jsonb_build_object('role', 'system', 'owner', '00000000-0000-0000-0000-0000000000' || p_owner))::text,
    true)
$$;
create function pg_temp.task(p_id text, p_state text, p_repo text, p_files jsonb) returns jsonb
language sql as $$
  select jsonb_build_object('seq', 1, 'task_id', p_id, 'version', 1, 'state', p_state,
    'title', 'task ' || right(p_id, 2), 'repo_url', p_repo, 'profile', 'claude',
    'priority', 0, 'attempts', 1, 'max_attempts', 3, 'created_at', '2026-01-01T00:00:00Z',
    'updated_at', '2026-01-01T00:00:00Z', 'touched_files', p_files)
$$;
create function pg_temp.ship(p_batch text, p_tasks jsonb) returns jsonb
language sql as $$
  select api.ingest_batch(jsonb_build_object('batch_id', p_batch,
    'streams', jsonb_build_object('task_summary', p_tasks)))
$$;
grant execute on all functions in schema pg_temp to authenticated;

set local role authenticated;
select pg_temp.as_system('a1');
select api.enroll('alpha', 2, '0.1.0');
select pg_temp.as_system('b1');
select api.enroll('beta', 2, '0.1.0');
select pg_temp.as_system('c1', 'f2');
select api.enroll('other-owner', 2, '0.1.0');
select pg_temp.ship('0193a000-0000-7000-8000-0000000000c1', jsonb_build_array(
  pg_temp.task('0193a000-0000-7000-8000-0000000000c1', 'executing', 'https://github.com/org/app',
               '["src/main.rs"]')));

select pg_temp.as_system('a1');
select is(
  pg_temp.ship('0193a000-0000-7000-8000-000000000001', jsonb_build_array(
    pg_temp.task('0193a000-0000-7000-8000-0000000000a1', 'executing', 'https://github.com/org/app',
                 '["src/main.rs", "README.md"]'),
    pg_temp.task('0193a000-0000-7000-8000-0000000000a2', 'complete', 'https://github.com/org/app',
                 (select jsonb_agg('f' || i) from generate_series(1, 250) i)),
    pg_temp.task('0193a000-0000-7000-8000-0000000000a3', 'cancelled', 'https://github.com/org/app',
                 '["src/main.rs"]'),
    pg_temp.task('0193a000-0000-7000-8000-0000000000a4', 'executing', 'https://github.com/org/lib',
                 '["src/main.rs"]'),
    pg_temp.task('0193a000-0000-7000-8000-0000000000a5', 'executing', 'https://github.com/org/app',
                 '[]'))) ->> 'accepted',
  '5',
  'summaries with touched files are accepted'
);
select is(
  (select touched_files from private.task_summaries
    where task_id = '0193a000-0000-7000-8000-0000000000a1'),
  array['src/main.rs', 'README.md'],
  'the touched files are stored'
);
select is(
  (select cardinality(touched_files) from private.task_summaries
    where task_id = '0193a000-0000-7000-8000-0000000000a2'),
  200,
  'at most 200 of them'
);
select is(
  (select touched_files from api.fleet_tasks
    where task_id = '0193a000-0000-7000-8000-0000000000a1'),
  array['src/main.rs', 'README.md'],
  'api.fleet_tasks shows them'
);

select pg_temp.as_system('b1');
select is(
  (select jsonb_agg(t ->> 'task_id' order by t ->> 'task_id')
     from jsonb_array_elements(api.fleet_task_files('["https://github.com/org/app"]')) t),
  '["0193a000-0000-7000-8000-0000000000a1", "0193a000-0000-7000-8000-0000000000a2"]',
  'another system of the owner sees the active tasks of the repository that touched something'
);
select is(
  api.fleet_task_files('["https://github.com/org/app"]') -> 0,
  '{"task_id": "0193a000-0000-7000-8000-0000000000a1", "system_name": "alpha", "state": "executing",
    "title": "task a1", "repo_url": "https://github.com/org/app",
    "touched_files": ["src/main.rs", "README.md"]}',
  'each with its system, state, title and files'
);

select pg_temp.as_system('a1');
select is(
  api.fleet_task_files('["https://github.com/org/app", "https://github.com/org/lib"]'),
  '[]',
  'a system is not told about its own tasks (nor another owner''s)'
);

select * from finish();
rollback;
