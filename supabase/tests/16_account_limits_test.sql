-- Usage limits shared across systems: a system reports its account's limit, the other systems
-- of its owner (never another owner's, never itself) read it while it lasts; a later reset
-- wins over an earlier one, a system's newer word replaces its own.
begin;
create extension if not exists pgtap with schema extensions;
select plan(10);

create function pg_temp.as_system(p_sub text, p_owner text default 'f1') returns void
language sql as $$
  select set_config('request.jwt.claims', jsonb_build_object('sub',
    '00000000-0000-0000-0000-0000000000' || p_sub, 'role', 'authenticated', 'app_metadata',
    jsonb_build_object('role', 'system', 'owner', '00000000-0000-0000-0000-0000000000' || p_owner))::text,
    true)
$$;
create function pg_temp.limits() returns jsonb
language sql as $$
  select coalesce(jsonb_agg(jsonb_build_object('account', l ->> 'account',
                                               'system_name', l ->> 'system_name')), '[]')
    from jsonb_array_elements(api.fleet_account_limits()) l
$$;
grant execute on all functions in schema pg_temp to authenticated;

set local role authenticated;
select pg_temp.as_system('a1');
select api.enroll('alpha', 2, '0.1.0');
select pg_temp.as_system('b1');
select api.enroll('beta', 2, '0.1.0');
select pg_temp.as_system('c1', 'f2');
select api.enroll('other-owner', 2, '0.1.0');

select pg_temp.as_system('a1');
select is(
  api.report_account_limit('team', now() + interval '1 hour', 'Claude AI usage limit reached')
    ->> 'system_name',
  'alpha',
  'a system reports its account''s limit'
);
select is(pg_temp.limits(), '[]', 'a system does not read its own limit back');

select pg_temp.as_system('b1');
select is(
  pg_temp.limits(),
  '[{"account": "team", "system_name": "alpha"}]',
  'another system of the owner reads it'
);
select is(
  (api.fleet_account_limits() -> 0 ->> 'reset_at_ms')::bigint,
  (extract(epoch from now() + interval '1 hour') * 1000)::bigint,
  'with its reset time in milliseconds'
);
select is(
  api.report_account_limit('team', now() + interval '10 minutes') ->> 'system_name',
  'alpha',
  'an earlier reset from another system leaves the later one in force'
);

select pg_temp.as_system('c1', 'f2');
select is(pg_temp.limits(), '[]', 'another owner''s systems read nothing');

select pg_temp.as_system('a1');
select is(
  (api.report_account_limit('team', now() + interval '5 minutes') ->> 'reset_at_ms')::bigint,
  (extract(epoch from now() + interval '5 minutes') * 1000)::bigint,
  'a system''s newer word replaces its own'
);
select api.report_account_limit('solo', now() - interval '1 minute');

select pg_temp.as_system('b1');
select is(
  pg_temp.limits(),
  '[{"account": "team", "system_name": "alpha"}]',
  'a limit whose reset passed is not in force'
);
select throws_ok(
  $$ select api.report_account_limit('', now()) $$,
  '22023',
  'p_account: must be an account name of 1 to 200 characters',
  'an empty account is refused naming the parameter'
);

reset role;
select is(
  (select count(*) from private.account_limits)::int,
  2,
  'one row per owner and account'
);

select * from finish();
rollback;
