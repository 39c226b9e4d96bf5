-- Named leases: one holder at a time among the systems of an owner, renewed by the holder,
-- free once run out or released; other owners and anon cannot touch them.
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
grant execute on all functions in schema pg_temp to authenticated;

set local role authenticated;
select pg_temp.as_system('a1');
select api.enroll('alpha', 2, '0.1.0');
select pg_temp.as_system('b1');
select api.enroll('beta', 2, '0.1.0');
select pg_temp.as_system('d1', 'f2');
select api.enroll('delta', 2, '0.1.0');

select pg_temp.as_system('a1');
select is((api.acquire_lease('telegram:abc', 60))->>'held', 'true', 'a free lease is taken');
select is((api.acquire_lease('telegram:abc', 60, '840000002'))->>'held', 'true', 'its holder renews it');
select pg_temp.as_system('b1');
select is(api.acquire_lease('telegram:abc', 60, '1') - 'expires_at',
          '{"name": "telegram:abc", "held": false, "holder": "alpha", "value": "840000002"}'::jsonb,
          'another system of the owner is told who holds it');
select pg_temp.as_system('d1', 'f2');
select is((api.acquire_lease('telegram:abc', 60))->>'held', 'true',
          'another owner has leases of its own');
select is((select count(*) from private.named_leases)::int, 1, 'a system sees only its owner''s leases');

reset role;
update private.named_leases set expires_at = now() - interval '1 second'
 where holder = (select system_id from private.systems where name = 'alpha');
set local role authenticated;
select pg_temp.as_system('b1');
select is(api.acquire_lease('telegram:abc', 60) - 'expires_at',
          '{"name": "telegram:abc", "held": true, "holder": "beta", "value": "840000002"}'::jsonb,
          'a lease that ran out is taken over, with the value its last holder left');
select is((api.release_lease('telegram:abc'))->>'released', 'true', 'its holder gives it back');
select pg_temp.as_system('a1');
select is((api.acquire_lease('telegram:abc', 60))->>'holder', 'alpha', 'a released lease is free at once');
select is((api.release_lease('telegram:abc'))->>'released', 'true', 'released again');
select throws_ok($$select api.acquire_lease('', 60)$$, '22023', 'p_name must be 1 to 200 characters',
                 'an empty name is refused with its reason');

select * from finish();
rollback;
