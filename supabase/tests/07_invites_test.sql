-- Invite codes: an enrolled system or an operator creates one; an Auth user with no system
-- (an anonymous sign-in) redeems it once and is then a system of the invite's owner.
begin;
create extension if not exists pgtap with schema extensions;
select plan(12);

create function pg_temp.as_user(p_claims jsonb) returns void
language sql as $$
  select set_config('request.jwt.claims', (p_claims || '{"role": "authenticated"}')::text, true)
$$;
grant execute on all functions in schema pg_temp to authenticated;

set local role authenticated;
select pg_temp.as_user('{"sub": "00000000-0000-0000-0000-0000000000a1", "app_metadata":
  {"role": "system", "owner": "00000000-0000-0000-0000-0000000000f1"}}');
select api.enroll('alpha', 2, '0.1.0');

create temp table codes (who text, code text);
grant all on codes to authenticated;
insert into codes select 'system', api.create_invite() ->> 'code';
select is(length((select code from codes where who = 'system')), 64, 'an enrolled system gets a code');

select pg_temp.as_user('{"sub": "00000000-0000-0000-0000-0000000000c1", "is_anonymous": true,
  "app_metadata": {"provider": "anonymous"}}');
select throws_ok($$select api.create_invite()$$, '42501',
  'only an enrolled system or an operator may invite', 'a stranger cannot invite');
select throws_ok($$select api.heartbeat('{}')$$, '42501', 'system not enrolled',
  'an anonymous user is no system before it redeems');
select throws_ok($$select api.redeem_invite('nope', 'gamma', 1, '0.1.0')$$, '42501',
  'invite code unknown, already used or expired', 'an unknown code is refused');
select is(api.redeem_invite((select code from codes where who = 'system'), 'gamma', 3, '0.1.0')
          - 'system_id',
          '{"name": "gamma", "owner": "00000000-0000-0000-0000-0000000000f1"}'::jsonb,
          'the code enrols the caller as a system of the inviter''s owner');
select is((api.heartbeat('{"running": 0}') ->> 'system_id')::uuid,
          (select system_id from private.systems where name = 'gamma'),
          'the redeemed system calls the api as itself');
select throws_ok($$select api.redeem_invite((select code from codes where who = 'system'), 'x', 1, '0')$$,
  '42501', 'this Auth user is already a system', 'a system cannot redeem again');

select pg_temp.as_user('{"sub": "00000000-0000-0000-0000-0000000000c2", "is_anonymous": true}');
select throws_ok($$select api.redeem_invite((select code from codes where who = 'system'), 'delta', 1, '0.1.0')$$,
  '42501', 'invite code unknown, already used or expired', 'a code works only once');

select pg_temp.as_user('{"sub": "00000000-0000-0000-0000-0000000000f2", "app_metadata": {"role": "operator"}}');
insert into codes select 'operator', api.create_invite(60) ->> 'code';
select is((select count(*) from private.invites)::int, 1, 'an operator sees only the invites of its own systems');
select throws_ok($$select api.create_invite(10)$$, '22023', 'p_ttl_s must be 60 to 604800 seconds',
  'a lifetime out of range is refused');

reset role;
update private.invites set expires_at = now() - interval '1 second' where owner = '00000000-0000-0000-0000-0000000000f2';
select is((select count(*) from private.invites where code_sha256 like '%' and length(code_sha256) = 64)::int, 2,
  'only the codes'' SHA-256 is stored');
set local role authenticated;
select pg_temp.as_user('{"sub": "00000000-0000-0000-0000-0000000000c2", "is_anonymous": true}');
select throws_ok($$select api.redeem_invite((select code from codes where who = 'operator'), 'delta', 1, '0.1.0')$$,
  '42501', 'invite code unknown, already used or expired', 'an expired code is refused');

select * from finish();
rollback;
