-- Usage limits shared across systems (issue 25; the node's `store/accounts.rs` and
-- `accounts.rs`).
--
-- Agents of one account (a profile's `account`) share its usage limit, on every system that
-- runs them. When an agent hits the limit, its system reports it with
-- `api.report_account_limit`; the other systems of the same owner read the limits in force
-- with `api.fleet_account_limits` and start no agent of that account until the reset.
-- One row per owner and account: a later reset replaces an earlier one, a system's newer
-- word replaces its own, and a row whose reset passed is replaced by any report.

create table private.account_limits (
  owner uuid not null,
  account text not null check (length(account) between 1 and 200),
  reset_at timestamptz not null,
  system_id uuid not null references private.systems on delete cascade,
  message text not null default '' check (length(message) <= 1000),
  reported_at timestamptz not null default now(),
  primary key (owner, account)
);

alter table private.account_limits enable row level security;
create policy account_limits_read on private.account_limits for select to authenticated using (
  system_id in (
    select s.system_id from private.systems s
     where s.auth_uid = (select auth.uid())
        or (s.owner = (select auth.uid())
            and ((select auth.jwt()) -> 'app_metadata' ->> 'role') = 'operator')));
grant select on private.account_limits to authenticated;
grant all on private.account_limits to service_role;

-- The caller's agents of `p_account` hit a usage limit that resets at `p_reset_at`. Answers
-- the limit in force for the account afterwards: `{account, reset_at, reset_at_ms,
-- system_name}` (another system's, when it resets later).
create function api.report_account_limit(
  p_account text, p_reset_at timestamptz, p_message text default ''
) returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
  v_owner uuid;
  v_answer jsonb;
begin
  if coalesce(p_account, '') = '' or length(p_account) > 200 then
    raise exception 'p_account: must be an account name of 1 to 200 characters'
      using errcode = '22023';
  end if;
  if p_reset_at is null then
    raise exception 'p_reset_at: the reset time is missing' using errcode = '22023';
  end if;
  select s.owner into v_owner from private.systems s where s.system_id = v_system;
  insert into private.account_limits as l (owner, account, reset_at, system_id, message)
  values (v_owner, p_account, p_reset_at, v_system, left(coalesce(p_message, ''), 1000))
  on conflict (owner, account) do update
     set reset_at = excluded.reset_at, system_id = excluded.system_id,
         message = excluded.message, reported_at = now()
   where l.reset_at <= now()
      or l.system_id = excluded.system_id
      or excluded.reset_at > l.reset_at;
  select jsonb_build_object('account', l.account, 'reset_at', l.reset_at,
           'reset_at_ms', (extract(epoch from l.reset_at) * 1000)::bigint,
           'system_name', s.name)
    into v_answer
    from private.account_limits l
    join private.systems s using (system_id)
   where l.owner = v_owner and l.account = p_account;
  return v_answer;
end
$$;
revoke execute on function api.report_account_limit(text, timestamptz, text) from public, anon;
grant execute on function api.report_account_limit(text, timestamptz, text) to authenticated;

-- The limits in force that other systems of the caller's owner reported:
-- `[{account, reset_at, reset_at_ms, system_name, message}]`, soonest reset first.
create function api.fleet_account_limits() returns jsonb
language plpgsql security definer stable
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
begin
  return (
    select coalesce(jsonb_agg(jsonb_build_object(
             'account', l.account, 'reset_at', l.reset_at,
             'reset_at_ms', (extract(epoch from l.reset_at) * 1000)::bigint,
             'system_name', s.name, 'message', l.message)
             order by l.reset_at, l.account), '[]'::jsonb)
      from private.account_limits l
      join private.systems s using (system_id)
     where l.owner = (select c.owner from private.systems c where c.system_id = v_system)
       and l.system_id <> v_system
       and s.state <> 'revoked'
       and l.reset_at > now());
end
$$;
revoke execute on function api.fleet_account_limits() from public, anon;
grant execute on function api.fleet_account_limits() to authenticated;

-- The limits in force, for the operator (the table editor, the fleet manager's digest).
create view api.account_limits with (security_invoker = true) as
select l.account, l.reset_at, l.system_id, s.name as system_name, l.message, l.reported_at
  from private.account_limits l
  join private.systems s using (system_id)
 where l.reset_at > now();
grant select on api.account_limits to authenticated;
