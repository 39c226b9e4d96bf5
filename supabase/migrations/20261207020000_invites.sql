-- One-time invite codes: enrolling a system with no password and no hand-set app_metadata.
--
-- An enrolled system (or an operator) creates a code for its owner with `api.create_invite`
-- (`ccm sync invite`). The new system signs in to Supabase Auth anonymously (`POST
-- /auth/v1/signup` with no email: the project must allow anonymous sign-ins) and redeems the
-- code once with `api.redeem_invite` under that session (`ccm sync enroll --code`): its
-- `private.systems` row is created for its Auth user and the invite's owner. Every other `api`
-- function finds a system by `auth.uid()` alone, so the anonymous user needs no app_metadata.
-- Only the code's SHA-256 is stored; a code works once, until it expires.

create table private.invites (
  code_sha256 text primary key,
  owner uuid not null,
  created_by uuid not null,
  created_at timestamptz not null default now(),
  expires_at timestamptz not null,
  redeemed_at timestamptz,
  redeemed_by uuid
);
alter table private.invites enable row level security;
create policy invites_read on private.invites for select to authenticated using (
  owner = (select auth.uid())
  and ((select auth.jwt()) -> 'app_metadata' ->> 'role') = 'operator'
);
grant select on private.invites to authenticated;
grant all on private.invites to service_role;

-- The owner whose systems the caller may invite: an active system's owner, or an operator
-- themselves; 42501 for anyone else.
create function private.inviting_owner() returns uuid
language plpgsql stable
set search_path = ''
as $$
declare
  v_owner uuid;
begin
  select s.owner into v_owner
    from private.systems s
   where s.auth_uid = (select auth.uid()) and s.state = 'active';
  if v_owner is null
     and ((select auth.jwt()) -> 'app_metadata' ->> 'role') = 'operator' then
    v_owner := (select auth.uid());
  end if;
  if v_owner is null then
    raise exception 'only an enrolled system or an operator may invite' using errcode = '42501';
  end if;
  return v_owner;
end
$$;
revoke execute on function private.inviting_owner() from public;

-- api.create_invite: a new one-time code for the caller's owner, valid for p_ttl_s seconds
-- (60 to 7 days). Answers {"code", "owner", "expires_at"}; the code is shown only here.
create function api.create_invite(p_ttl_s integer default 86400) returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_owner uuid := private.inviting_owner();
  v_code text;
  v_expires timestamptz;
begin
  if p_ttl_s is null or p_ttl_s < 60 or p_ttl_s > 604800 then
    raise exception 'p_ttl_s must be 60 to 604800 seconds' using errcode = '22023';
  end if;
  -- 244 random bits (two version-4 uuids without their dashes).
  v_code := replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
  v_expires := now() + make_interval(secs => p_ttl_s);
  insert into private.invites (code_sha256, owner, created_by, expires_at)
  values (encode(sha256(convert_to(v_code, 'UTF8')), 'hex'), v_owner, (select auth.uid()),
          v_expires);
  return jsonb_build_object('code', v_code, 'owner', v_owner, 'expires_at', v_expires);
end
$$;

-- api.redeem_invite: enrols the caller (any Auth user with no system yet, typically an
-- anonymous one) as a system of the invite's owner, using the code up. Answers like
-- api.enroll: {"system_id", "name", "owner"}.
create function api.redeem_invite(p_code text, p_name text, p_slots integer, p_version text)
returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_uid uuid := (select auth.uid());
  v_invite private.invites;
  v_row private.systems;
begin
  if v_uid is null then
    raise exception 'no authenticated user' using errcode = '42501';
  end if;
  if p_name is null or btrim(p_name) = '' then
    raise exception 'p_name is missing' using errcode = '22023';
  end if;
  if p_slots is null or p_slots < 0 then
    raise exception 'p_slots must be 0 or more' using errcode = '22023';
  end if;
  if exists (select 1 from private.systems s where s.auth_uid = v_uid) then
    raise exception 'this Auth user is already a system' using errcode = '42501';
  end if;
  select * into v_invite
    from private.invites i
   where i.code_sha256 = encode(sha256(convert_to(coalesce(p_code, ''), 'UTF8')), 'hex')
     for update;
  if v_invite.code_sha256 is null or v_invite.redeemed_at is not null
     or v_invite.expires_at <= now() then
    raise exception 'invite code unknown, already used or expired' using errcode = '42501';
  end if;
  update private.invites set redeemed_at = now(), redeemed_by = v_uid
   where code_sha256 = v_invite.code_sha256;
  insert into private.systems (auth_uid, owner, name, slots, version)
  values (v_uid, v_invite.owner, p_name, p_slots, p_version)
  returning * into v_row;
  return jsonb_build_object('system_id', v_row.system_id, 'name', v_row.name,
                            'owner', v_row.owner);
end
$$;

revoke execute on function api.create_invite(integer),
  api.redeem_invite(text, text, integer, text) from public, anon;
grant execute on function api.create_invite(integer),
  api.redeem_invite(text, text, integer, text) to authenticated;
