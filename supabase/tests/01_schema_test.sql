-- The shape of the central schema: what is exposed, to whom, and how.
begin;
create extension if not exists pgtap with schema extensions;
select plan(11);

select has_schema('private');
select has_schema('api');

select is(
  (select array_agg(tablename::text order by tablename) from pg_tables
    where schemaname = 'private' and not rowsecurity),
  null,
  'row-level security is on for every table in private'
);

select is(
  (select array_agg(p.proname::text order by p.proname) from pg_proc p
     join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'api'
      and not (p.prosecdef and p.proconfig @> array['search_path=""'])),
  null,
  'every api function is security definer with an empty search_path'
);

select is(
  (select array_agg(p.proname::text order by p.proname) from pg_proc p
     join pg_namespace n on n.oid = p.pronamespace
    where n.nspname in ('api', 'private')
      and (has_function_privilege('anon', p.oid, 'execute')
           or has_function_privilege('public', p.oid, 'execute'))),
  null,
  'neither anon nor public may execute a function of api or private'
);

select is(
  (select array_agg(p.proname::text order by p.proname) from pg_proc p
     join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'api'),
  array['acquire_lease', 'cancel_routed', 'claim', 'complete', 'create_invite', 'drain',
        'enroll', 'fleet_account_limits', 'fleet_task_files', 'heartbeat', 'ingest_batch',
        'list_systems', 'pin_routed', 'redeem_invite', 'register_contexts', 'release',
        'release_lease', 'report_account_limit', 'report_progress', 'retry_routed',
        'routed_status', 'submit_task'],
  'api exposes the sync functions (enroll, heartbeat, register_contexts, ingest_batch), the routing ones (with the origin''s cancel, retry and pin), the named leases, the invites, the other systems'' touched files and the accounts'' usage limits'
);

select ok(
  (select bool_and(has_function_privilege('authenticated', p.oid, 'execute')) from pg_proc p
     join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'api'),
  'authenticated may execute every api function'
);

select ok(
  not has_schema_privilege('anon', 'private', 'usage')
  and not has_schema_privilege('anon', 'api', 'usage'),
  'anon may not use schema private or api'
);

select is(
  (select array_agg(c.relname::text order by c.relname) from pg_class c
     join pg_namespace n on n.oid = c.relnamespace
    where n.nspname in ('private', 'api') and c.relkind in ('r', 'v')
      and has_table_privilege('anon', c.oid, 'select, insert, update, delete')),
  null,
  'anon has no privilege on any table or view'
);

select is(
  (select array_agg(policyname::text order by policyname) from pg_policies
    where schemaname = 'private'
      and (coalesce(qual, '') || coalesce(with_check, '')) ~ '(?<!SELECT )auth\.(uid|jwt)\(\)'),
  null,
  'policies call auth.uid() and auth.jwt() once per statement, as (select auth.uid())'
);

select is(
  (select array_agg(c.relname::text order by c.relname) from pg_class c
     join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = 'api' and c.relkind = 'v'
      and not coalesce(c.reloptions @> array['security_invoker=true'], false)),
  null,
  'every api view runs with the rights of its caller (security_invoker)'
);

select * from finish();
rollback;
