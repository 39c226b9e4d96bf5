-- A revoked system is told so: `private.caller_system` answered "system not enrolled" to a
-- revoked system as to an identity that never enrolled, which sent its operator to enroll
-- again (refused: `api.enroll` answers "system revoked"). Both stay 42501; the message says
-- which, and the node's pause reason follows it (`ccm_sync::driver::pause_reason`).
create or replace function private.caller_system() returns uuid
language plpgsql stable
set search_path = ''
as $$
declare
  v_system uuid;
  v_state text;
begin
  select s.system_id, s.state into v_system, v_state
    from private.systems s
   where s.auth_uid = (select auth.uid());
  if v_system is null then
    raise exception 'system not enrolled' using errcode = '42501';
  end if;
  if v_state = 'revoked' then
    raise exception 'system revoked' using errcode = '42501';
  end if;
  return v_system;
end
$$;
