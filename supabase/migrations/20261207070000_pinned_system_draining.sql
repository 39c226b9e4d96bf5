-- A task pinned to a draining system says so (issue 27, item 4): its waiting reason is
-- `pinned_system_draining`, not `all_busy`. The reason is computed in api.submit_task and in
-- the reaper's slower pass (`..._routing.sql`), where a draining system counts as busy; rather
-- than repeat those functions, two triggers name the drain:
--
-- - on private.routed_tasks, an `all_busy` written for a task pinned to a draining system
--   becomes `pinned_system_draining` (the reaper writing `all_busy` over it again each pass
--   leaves the row's updated_at alone, so api.routed_status does not report it again);
-- - on private.systems, a drain that starts renames the `all_busy` of the queued tasks pinned
--   to it, and one that ends clears their `pinned_system_draining` (the next reaper pass or
--   claim decides again).

alter table private.routed_tasks drop constraint routed_tasks_reason_check;
alter table private.routed_tasks add constraint routed_tasks_reason_check
  check (reason in ('no_context', 'all_busy', 'all_stale', 'pinned_system_draining'));

create function private.pinned_drain_reason() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if new.reason = 'all_busy' and new.pinned_system is not null
     and exists (select from private.systems s
                  where s.system_id = new.pinned_system and (s.draining or s.drain_requested))
  then
    new.reason := 'pinned_system_draining';
    if tg_op = 'UPDATE' and old.reason is not distinct from new.reason
       and old.state = new.state then
      new.updated_at := old.updated_at;
    end if;
  end if;
  return new;
end
$$;
revoke execute on function private.pinned_drain_reason() from public;

create trigger routed_tasks_pinned_drain
  before insert or update of reason on private.routed_tasks
  for each row execute function private.pinned_drain_reason();

create function private.drain_renames_pinned() returns trigger
language plpgsql
set search_path = ''
as $$
declare
  v_was boolean := old.draining or old.drain_requested;
  v_is boolean := new.draining or new.drain_requested;
begin
  if v_is and not v_was then
    update private.routed_tasks
       set reason = 'pinned_system_draining', updated_at = now()
     where pinned_system = new.system_id and state = 'queued' and reason = 'all_busy';
  elsif v_was and not v_is then
    update private.routed_tasks
       set reason = null, updated_at = now()
     where pinned_system = new.system_id and state = 'queued'
       and reason = 'pinned_system_draining';
  end if;
  return new;
end
$$;
revoke execute on function private.drain_renames_pinned() from public;

create trigger systems_drain_renames_pinned
  after update of draining, drain_requested on private.systems
  for each row execute function private.drain_renames_pinned();
