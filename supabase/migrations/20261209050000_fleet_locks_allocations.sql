-- Coordination across the fleet (issue 24): fleet-scoped named locks with a fencing token, and
-- allocators of named sequences per repository, for the agents of all the systems of an owner.

-- A fleet-scoped lock is a named lease (`private.named_leases`, migration
-- `20261130170000_named_leases.sql`) held by one system at a time; the node decides which of
-- its agents holds it. Every acquisition of a free (or run out) lease takes a fencing token one
-- above the previous one of the name, so a holder cut off by a partition writes with an older
-- token than its successor. A renewal by the holder keeps its token.
alter table private.named_leases add column fence bigint not null default 0;

-- Takes or renews the lock `p_name` (the lease `lock:<p_name>`) for `p_ttl_s` seconds.
-- Answer: {"name", "held": bool, "holder": <system name>, "expires_at", "fence"}: the fence is
-- the current holder's token (the caller's when `held`).
-- Errors: 22023 (name empty or longer than 190, ttl out of 1..3600), 42501 (not enrolled).
create function api.acquire_lock(p_name text, p_ttl_s integer) returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
  v_owner uuid;
  v_lease private.named_leases;
begin
  if p_name is null or length(p_name) not between 1 and 190 then
    raise exception 'p_name must be 1 to 190 characters' using errcode = '22023';
  end if;
  if p_ttl_s is null or p_ttl_s not between 1 and 3600 then
    raise exception 'p_ttl_s must be between 1 and 3600' using errcode = '22023';
  end if;
  select s.owner into v_owner from private.systems s where s.system_id = v_system;
  insert into private.named_leases as l (owner, name, holder, expires_at, fence)
  values (v_owner, 'lock:' || p_name, v_system, now() + make_interval(secs => p_ttl_s), 1)
  on conflict (owner, name) do update
    set holder = excluded.holder, expires_at = excluded.expires_at,
        fence = case when l.expires_at < now() then l.fence + 1 else l.fence end
    where l.holder = excluded.holder or l.expires_at < now();
  select * into v_lease from private.named_leases l
   where l.owner = v_owner and l.name = 'lock:' || p_name;
  return jsonb_build_object(
    'name', p_name,
    'held', v_lease.holder = v_system,
    'holder', (select s.name from private.systems s where s.system_id = v_lease.holder),
    'expires_at', v_lease.expires_at,
    'fence', v_lease.fence);
end
$$;

-- Gives the lock back when the caller holds it; the next acquisition (any system's) takes it
-- at once, with the next token. Answer: {"name", "released": bool}.
create function api.release_lock(p_name text) returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
  v_released integer;
begin
  update private.named_leases l set expires_at = now() - interval '1 microsecond'
   where l.name = 'lock:' || p_name and l.holder = v_system and l.expires_at >= now();
  get diagnostics v_released = row_count;
  return jsonb_build_object('name', p_name, 'released', v_released > 0);
end
$$;

-- Values handed out of a named sequence of a repository (normalized URL) among the systems of
-- one owner: each value is held by one task at a time; a released value is handed out again
-- (lowest first) before a new one, so the values in use stay gap-free from the start.
create table private.allocations (
  owner uuid not null,
  repo_url text not null check (length(repo_url) between 1 and 2000),
  sequence text not null check (length(sequence) between 1 and 100),
  value bigint not null check (value >= 0),
  state text not null check (state in ('held', 'released')),
  -- The system and task that hold it (the system's row may go; the value stays held).
  system_id uuid references private.systems on delete set null,
  task_id uuid,
  allocated_at timestamptz not null default now(),
  released_at timestamptz,
  primary key (owner, repo_url, sequence, value)
);
create index allocations_released on private.allocations (owner, repo_url, sequence, value)
  where state = 'released';
alter table private.allocations enable row level security;
create policy allocations_read on private.allocations for select to authenticated using (
  owner in (select s.owner from private.systems s where s.auth_uid = (select auth.uid()))
  or (owner = (select auth.uid())
      and ((select auth.jwt()) -> 'app_metadata' ->> 'role') = 'operator')
);
grant select on private.allocations to authenticated;
grant all on private.allocations to service_role;

create function private.allocation_json(p_row private.allocations) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object(
    'repo', p_row.repo_url, 'sequence', p_row.sequence, 'value', p_row.value,
    'state', p_row.state, 'task_id', p_row.task_id,
    'system', (select s.name from private.systems s where s.system_id = p_row.system_id),
    'allocated_at', p_row.allocated_at, 'released_at', p_row.released_at)
$$;

create function private.check_sequence(p_repo text, p_sequence text) returns void
language plpgsql immutable
set search_path = ''
as $$
begin
  if p_repo is null or length(btrim(p_repo)) not between 1 and 2000 then
    raise exception 'p_repo must be a repository url of 1 to 2000 characters' using errcode = '22023';
  end if;
  if p_sequence is null or length(p_sequence) not between 1 and 100 then
    raise exception 'p_sequence must be 1 to 100 characters' using errcode = '22023';
  end if;
end
$$;

-- The next value of `p_sequence` in `p_repo` for the caller's task `p_task` (none: the
-- operator's own allocation): the lowest
-- released one (not below `p_start`), else one above the highest ever handed out, else
-- `p_start`. One caller at a time per (owner, repository, sequence) (a transaction-scoped
-- advisory lock), so two calls never get the same value and none is skipped.
-- Answer: {"repo", "sequence", "value", "state": "held", "task_id", "system", "allocated_at",
-- "released_at"}. Errors: 22023 (bad repository, sequence or start), 42501 (not enrolled).
create function api.allocate(p_repo text, p_sequence text, p_task uuid default null,
                             p_start bigint default 1)
returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
  v_owner uuid;
  v_repo text;
  v_value bigint;
  v_row private.allocations;
begin
  perform private.check_sequence(p_repo, p_sequence);
  if p_start is null or p_start < 0 then
    raise exception 'p_start must be 0 or more' using errcode = '22023';
  end if;
  select s.owner into v_owner from private.systems s where s.system_id = v_system;
  v_repo := private.normalize_repo_url(p_repo);
  perform pg_advisory_xact_lock(
    hashtextextended(v_owner::text || '|' || v_repo || '|' || p_sequence, 24));
  select a.value into v_value from private.allocations a
   where a.owner = v_owner and a.repo_url = v_repo and a.sequence = p_sequence
     and a.state = 'released' and a.value >= p_start
   order by a.value limit 1;
  if v_value is null then
    select greatest(coalesce(max(a.value) + 1, p_start), p_start) into v_value
      from private.allocations a
     where a.owner = v_owner and a.repo_url = v_repo and a.sequence = p_sequence;
  end if;
  insert into private.allocations as a
    (owner, repo_url, sequence, value, state, system_id, task_id, allocated_at)
  values (v_owner, v_repo, p_sequence, v_value, 'held', v_system, p_task, now())
  on conflict (owner, repo_url, sequence, value) do update
    set state = 'held', system_id = excluded.system_id, task_id = excluded.task_id,
        allocated_at = excluded.allocated_at, released_at = null
    where a.state = 'released'
  returning * into v_row;
  return private.allocation_json(v_row);
end
$$;

-- Gives a held value back, from any system of the owner (the operator releasing the values of
-- a system that died); with `p_task`, only that task's own value. The next `allocate` hands it
-- out again. Answer: the allocation, `"state": "released"`.
-- Errors: P0002 (the value is not held), 42501 (not enrolled; another task's value), 22023.
create function api.release_allocation(p_repo text, p_sequence text, p_value bigint,
                                       p_task uuid default null)
returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
  v_owner uuid;
  v_repo text;
  v_row private.allocations;
begin
  perform private.check_sequence(p_repo, p_sequence);
  select s.owner into v_owner from private.systems s where s.system_id = v_system;
  v_repo := private.normalize_repo_url(p_repo);
  select * into v_row from private.allocations a
   where a.owner = v_owner and a.repo_url = v_repo and a.sequence = p_sequence
     and a.value = p_value and a.state = 'held'
   for update;
  if not found then
    raise exception 'value % of sequence % is not held in %', p_value, p_sequence, v_repo
      using errcode = 'P0002';
  end if;
  if p_task is not null and v_row.task_id is distinct from p_task then
    raise exception 'value % of sequence % was allocated to another task', p_value, p_sequence
      using errcode = '42501';
  end if;
  update private.allocations a set state = 'released', released_at = now()
   where a.owner = v_owner and a.repo_url = v_repo and a.sequence = p_sequence
     and a.value = p_value
  returning * into v_row;
  return private.allocation_json(v_row);
end
$$;

-- The allocations of the caller's owner (of one repository when `p_repo` is given), held
-- ones first: which system and task hold each value.
create function api.list_allocations(p_repo text default null) returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
  v_owner uuid;
begin
  select s.owner into v_owner from private.systems s where s.system_id = v_system;
  return (
    select coalesce(jsonb_agg(private.allocation_json(a)
             order by a.state, a.repo_url, a.sequence, a.value), '[]'::jsonb)
      from private.allocations a
     where a.owner = v_owner
       and (p_repo is null or a.repo_url = private.normalize_repo_url(p_repo)));
end
$$;

revoke all on function api.acquire_lock(text, integer), api.release_lock(text),
  api.allocate(text, text, uuid, bigint), api.release_allocation(text, text, bigint, uuid),
  api.list_allocations(text) from public, anon;
grant execute on function api.acquire_lock(text, integer), api.release_lock(text),
  api.allocate(text, text, uuid, bigint), api.release_allocation(text, text, bigint, uuid),
  api.list_allocations(text) to authenticated;
revoke all on function private.allocation_json(private.allocations),
  private.check_sequence(text, text) from public;
