-- Named leases among the systems of one owner: a job that must run on one system at a time
-- (the Telegram poller of a bot token shared by several systems: two pollers make Telegram
-- answer 409) is run by the holder of its lease. A holder renews its lease before it runs out;
-- a lease that ran out (its holder crashed or was cut off) is free for any system of the owner.

create table private.named_leases (
  owner uuid not null,
  name text not null check (length(name) between 1 and 200),
  holder uuid not null references private.systems on delete cascade,
  expires_at timestamptz not null,
  -- What the holders hand on to each other (a Telegram poller: the next update offset).
  value text,
  primary key (owner, name)
);
alter table private.named_leases enable row level security;
-- A system reads the leases of its owner's systems; an operator those of their systems.
create policy named_leases_read on private.named_leases for select to authenticated using (
  owner in (select s.owner from private.systems s where s.auth_uid = (select auth.uid()))
  or (owner = (select auth.uid())
      and ((select auth.jwt()) -> 'app_metadata' ->> 'role') = 'operator')
);
grant select on private.named_leases to authenticated;
grant all on private.named_leases to service_role;

-- Takes or renews the lease `p_name` for `p_ttl_s` seconds (1..3600) when it is free, ran out,
-- or is the caller's; a holder's `p_value` (when given) is kept for the next holder.
-- Answer: {"name", "held": bool, "holder": <system name>, "expires_at", "value"}.
-- Errors: 22023 (name empty or longer than 200, ttl out of range), 42501 (not enrolled).
create function api.acquire_lease(p_name text, p_ttl_s integer, p_value text default null)
returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
  v_owner uuid;
  v_lease private.named_leases;
begin
  if p_name is null or length(p_name) not between 1 and 200 then
    raise exception 'p_name must be 1 to 200 characters' using errcode = '22023';
  end if;
  if p_ttl_s is null or p_ttl_s not between 1 and 3600 then
    raise exception 'p_ttl_s must be between 1 and 3600' using errcode = '22023';
  end if;
  select s.owner into v_owner from private.systems s where s.system_id = v_system;
  insert into private.named_leases as l (owner, name, holder, expires_at, value)
  values (v_owner, p_name, v_system, now() + make_interval(secs => p_ttl_s), p_value)
  on conflict (owner, name) do update
    set holder = excluded.holder, expires_at = excluded.expires_at,
        value = coalesce(excluded.value, l.value)
    where l.holder = excluded.holder or l.expires_at < now();
  select * into v_lease from private.named_leases l where l.owner = v_owner and l.name = p_name;
  return jsonb_build_object(
    'name', p_name,
    'held', v_lease.holder = v_system,
    'holder', (select s.name from private.systems s where s.system_id = v_lease.holder),
    'expires_at', v_lease.expires_at,
    'value', v_lease.value);
end
$$;

-- Gives the lease back when the caller holds it (a clean stop), so another system takes over
-- at once (with the value it left). Answer: {"name", "released": bool}.
create function api.release_lease(p_name text) returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
  v_released integer;
begin
  -- The row stays (its value is handed on), run out.
  update private.named_leases l set expires_at = now() - interval '1 microsecond'
   where l.name = p_name and l.holder = v_system and l.expires_at >= now();
  get diagnostics v_released = row_count;
  return jsonb_build_object('name', p_name, 'released', v_released > 0);
end
$$;

revoke all on function api.acquire_lease(text, integer, text), api.release_lease(text) from public, anon;
grant execute on function api.acquire_lease(text, integer, text), api.release_lease(text) to authenticated;
