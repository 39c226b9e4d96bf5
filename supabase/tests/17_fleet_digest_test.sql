-- The fleet digest: a system of an owner reads every system of its owner (presence, tasks by
-- state, open alerts, routed tasks, cost), never another owner's; anon cannot call it.
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
grant execute on all functions in schema pg_temp to authenticated;

set local role authenticated;
select pg_temp.as_system('a1');
select api.enroll('alpha', 2, '0.1.0');
select pg_temp.as_system('b1');
select api.enroll('beta', 2, '0.1.0');
select pg_temp.as_system('d1', 'f2');
select api.enroll('delta', 2, '0.1.0');

reset role;
insert into private.task_summaries (task_id, system_id, version, state, title, cost_usd,
                                    created_at, updated_at)
select gen_random_uuid(), s.system_id, 1, t.state, t.title, 0.5, now(), now()
  from (values ('alpha', 'complete', 'a1'), ('alpha', 'failed', 'a2'), ('beta', 'complete', 'b1'),
               ('delta', 'failed', 'd1')) t(name, state, title)
  join private.systems s on s.name = t.name;
insert into private.alerts (alert_id, system_id, version, severity, kind, message, created_at)
select gen_random_uuid(), s.system_id, 1, 'critical', 'attempts_exhausted', s.name || ' is stuck', now()
  from private.systems s;

set local role authenticated;
select pg_temp.as_system('b1');
select is((select jsonb_agg(v->>'name') from jsonb_array_elements(api.fleet_digest()->'systems') v),
          '["alpha", "beta"]'::jsonb, 'a system sees every system of its owner, and no other');
select is(api.fleet_digest()->'tasks_by_state',
          '[{"system": "alpha", "state": "complete", "tasks": 1, "changed": 1},
            {"system": "alpha", "state": "failed", "tasks": 1, "changed": 1},
            {"system": "beta", "state": "complete", "tasks": 1, "changed": 1}]'::jsonb,
          'tasks by state per system, the other systems'' included');
select is((select count(*) from jsonb_array_elements(api.fleet_digest()->'open_alerts'))::int, 2,
          'the open alerts of the owner''s systems');
select is((select sum((v->>'cost_usd')::numeric) from jsonb_array_elements(api.fleet_digest()->'cost_by_day') v),
          1.5::numeric, 'today''s cost of the owner''s systems');
select is((select sum((v->>'changed')::int) from jsonb_array_elements(
             api.fleet_digest(now() + interval '1 hour')->'tasks_by_state') v), 0::bigint,
          'changes are counted since p_since');
select is((select count(*) from private.task_summaries)::int, 1,
          'the tables still show a system only its own rows');
reset role;
set local role anon;
select throws_ok($$select api.fleet_digest()$$, '42501', null, 'anon cannot read the fleet');

select * from finish();
rollback;
