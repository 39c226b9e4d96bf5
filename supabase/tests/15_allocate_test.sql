-- Allocators of named sequences and fleet-scoped locks (migration
-- `20261209050000_fleet_locks_allocations.sql`): values handed out once, gap-free per
-- repository and sequence, reused only after release; lock fencing tokens grow with each holder.
begin;
create extension if not exists pgtap with schema extensions;
select plan(22);

create function pg_temp.as_system(p_sub text, p_owner text default 'f1') returns void
language sql as $$
  select set_config('request.jwt.claims', jsonb_build_object('sub',
    '00000000-0000-0000-0000-0000000000' || p_sub, 'role', 'authenticated', 'app_metadata',
    jsonb_build_object('role', 'system', 'owner', '00000000-0000-0000-0000-0000000000' || p_owner))::text,
    true)
$$;
grant execute on all functions in schema pg_temp to authenticated;

set local role authenticated;
select pg_temp.as_system('a1');
select api.enroll('alpha', 2, '0.1.0');
select pg_temp.as_system('b1');
select api.enroll('beta', 2, '0.1.0');
select pg_temp.as_system('d1', 'f2');
select api.enroll('delta', 2, '0.1.0');

-- Allocations.
select pg_temp.as_system('a1');
select is((api.allocate('git@github.com:org/app.git', 'migrations',
                        '00000000-0000-4000-8000-0000000000a1', 1))->>'value', '1',
          'the first value of a sequence is its start');
select is((api.allocate('https://github.com/org/app', 'migrations',
                        '00000000-0000-4000-8000-0000000000a2', 1))->>'value', '2',
          'the next value follows, whatever the spelling of the repository');
select pg_temp.as_system('b1');
select is(api.allocate('https://github.com/org/app', 'migrations',
                       '00000000-0000-4000-8000-0000000000b1', 1)
            - 'allocated_at' - 'released_at',
          '{"repo": "https://github.com/org/app", "sequence": "migrations", "value": 3,
            "state": "held", "task_id": "00000000-0000-4000-8000-0000000000b1",
            "system": "beta"}'::jsonb,
          'another system of the owner gets the next value, recorded with its task');
select is((api.allocate('https://github.com/org/app', 'tickets', null, 100))->>'value', '100',
          'each sequence counts on its own, from its start');
select is((api.allocate('https://github.com/org/other', 'migrations', null, 1))->>'value', '1',
          'each repository counts on its own');
select pg_temp.as_system('d1', 'f2');
select is((api.allocate('https://github.com/org/app', 'migrations', null, 1))->>'value', '1',
          'another owner has sequences of its own');
select is(jsonb_array_length(api.list_allocations()), 1, 'and sees only its own allocations');

select pg_temp.as_system('a1');
select is(jsonb_array_length(api.list_allocations('git@github.com:org/app.git')), 4,
          'the allocations of a repository are listed for every system of the owner');
select is((select string_agg(a ->> 'system', ',' order by (a ->> 'value')::int)
             from jsonb_array_elements(api.list_allocations('https://github.com/org/app')) a
            where a ->> 'sequence' = 'migrations'),
          'alpha,alpha,beta', 'with the system holding each value');
select throws_ok($$select api.release_allocation('https://github.com/org/app', 'migrations', 3,
                                                 '00000000-0000-4000-8000-0000000000a1')$$,
                 '42501', 'value 3 of sequence migrations was allocated to another task',
                 'a task cannot release another task''s value');
-- beta died holding 3: any system of the owner releases it, and it is handed out again.
select is((api.release_allocation('https://github.com/org/app', 'migrations', 3))->>'state',
          'released', 'a value held by a system that died is released by another one');
select throws_ok($$select api.release_allocation('https://github.com/org/app', 'migrations', 3)$$,
                 'P0002', 'value 3 of sequence migrations is not held in https://github.com/org/app',
                 'a value not held cannot be released');
select is((api.allocate('https://github.com/org/app', 'migrations', null, 1))->>'value', '3',
          'a released value is handed out again before a new one');
select is((api.allocate('https://github.com/org/app', 'migrations', null, 1))->>'value', '4',
          'then the values go on without a gap');
select is((api.release_allocation('https://github.com/org/app', 'migrations', 1,
                                  '00000000-0000-4000-8000-0000000000a1'))->>'state', 'released',
          'a task releases its own value');
select throws_ok($$select api.allocate('https://github.com/org/app', '', null, 1)$$, '22023',
                 'p_sequence must be 1 to 100 characters', 'an empty sequence is refused');
select throws_ok($$select api.allocate('https://github.com/org/app', 'm', null, -1)$$, '22023',
                 'p_start must be 0 or more', 'a negative start is refused');

-- Fleet-scoped locks.
select is((api.acquire_lock('build', 60)) - 'expires_at',
          '{"name": "build", "held": true, "holder": "alpha", "fence": 1}'::jsonb,
          'a free lock is taken with the first fencing token');
select is((api.acquire_lock('build', 60))->>'fence', '1', 'its holder renews it with its token');
select pg_temp.as_system('b1');
select is((api.acquire_lock('build', 60)) - 'expires_at',
          '{"name": "build", "held": false, "holder": "alpha", "fence": 1}'::jsonb,
          'another system waits, told who holds it');
select pg_temp.as_system('a1');
select is((api.release_lock('build'))->>'released', 'true', 'its holder gives it back');
select pg_temp.as_system('b1');
select is((api.acquire_lock('build', 60)) - 'expires_at',
          '{"name": "build", "held": true, "holder": "beta", "fence": 2}'::jsonb,
          'the next holder gets the next fencing token');

select * from finish();
rollback;
