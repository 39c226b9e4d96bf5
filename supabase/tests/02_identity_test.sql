-- api.enroll, api.heartbeat and api.register_contexts, called as the systems themselves.
begin;
create extension if not exists pgtap with schema extensions;
select plan(18);

set local role authenticated;

-- System A of operator 1.
set local request.jwt.claims to '{"sub": "00000000-0000-0000-0000-0000000000a1", "role": "authenticated", "app_metadata": {"role": "system", "owner": "00000000-0000-0000-0000-0000000000f1"}}';

select is(
  api.enroll('alpha', 4, '0.1.0') - 'system_id',
  '{"name": "alpha", "owner": "00000000-0000-0000-0000-0000000000f1"}'::jsonb,
  'enroll answers the name and the owner from app_metadata'
);
select is(
  (api.enroll('alpha', 4, '0.1.0') ->> 'system_id')::uuid,
  (select system_id from private.systems),
  'enroll answers the system id it stored'
);
select is(
  (api.enroll('alpha-renamed', 8, '0.2.0') ->> 'system_id')::uuid,
  (select system_id from private.systems),
  'enrolling again keeps the system id'
);
select is(
  (select row(name, slots, version)::text from private.systems),
  '(alpha-renamed,8,0.2.0)',
  'enrolling again updates name, slots and version'
);
select throws_ok(
  $$ select api.enroll('', 4, '0.1.0') $$, '22023', 'p_name is missing',
  'enroll refuses an empty name'
);

select is(
  (select presence_reason from api.fleet_systems),
  'never_seen',
  'an enrolled system never heard from is never_seen'
);
select is(
  api.heartbeat('{"running": 2, "slots": 8, "draining": true, "later": 1}') -> 'system_id',
  to_jsonb((select system_id from private.systems)),
  'heartbeat answers the caller''s system id'
);
select is(
  (select row(running, slots, draining, presence, presence_reason)::text
     from api.fleet_systems),
  '(2,8,t,online,online)',
  'heartbeat records the load, and the system is online'
);
select throws_ok(
  $$ select api.heartbeat('[1]') $$, '22023', 'p_status must be a json object',
  'heartbeat refuses a status that is not an object'
);

select is(
  api.register_contexts(2, '[{"repo_url": "https://github.com/org/app", "path": "/src/app", "default_branch": "main", "head_sha": null, "updated_at": "2026-01-01T00:00:00Z"}, {"repo_url": "https://github.com/org/lib", "path": "/src/lib", "default_branch": "main", "head_sha": "abc", "updated_at": "2026-01-01T00:00:00Z"}]'),
  '{"status": "applied", "generation": 2}',
  'contexts of a newer generation are applied'
);
select is(
  api.register_contexts(2, '[]'),
  '{"status": "stale", "generation": 2}',
  'contexts of the same generation are stale and change nothing'
);
select is(
  (select array_agg(repo_url order by repo_url) from private.contexts),
  array['https://github.com/org/app', 'https://github.com/org/lib'],
  'a stale generation left the contexts as they were'
);
select is(
  api.register_contexts(3, '[{"repo_url": "https://github.com/org/lib", "path": "/src/lib"}]')
    ->> 'status',
  'applied',
  'a newer generation replaces the set'
);
select is(
  (select array_agg(repo_url || ' ' || generation) from private.contexts),
  array['https://github.com/org/lib 3'],
  'the replaced set is exactly the new one'
);

-- An operator is not a system.
set local request.jwt.claims to '{"sub": "00000000-0000-0000-0000-0000000000f1", "role": "authenticated", "app_metadata": {"role": "operator"}}';
select throws_ok(
  $$ select api.enroll('op', 1, '0.1.0') $$, '42501',
  'enroll needs a system identity (app_metadata.role = system)',
  'an operator cannot enroll as a system'
);
select throws_ok(
  $$ select api.heartbeat('{}') $$, '42501', 'system not enrolled',
  'a caller that is not an enrolled system cannot send a heartbeat'
);

-- A revoked system is refused everywhere, enroll included.
reset role;
update private.systems set state = 'revoked';
set local role authenticated;
set local request.jwt.claims to '{"sub": "00000000-0000-0000-0000-0000000000a1", "role": "authenticated", "app_metadata": {"role": "system", "owner": "00000000-0000-0000-0000-0000000000f1"}}';
select throws_ok(
  $$ select api.enroll('alpha', 4, '0.1.0') $$, '42501', 'system revoked',
  'a revoked system cannot enroll itself again'
);
select throws_ok(
  $$ select api.heartbeat('{}') $$, '42501', 'system revoked',
  'a revoked system is told it was revoked, not that it never enrolled'
);

select * from finish();
rollback;
