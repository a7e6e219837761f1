"""The Lua scripts behind every atomic queue change, each in one place.

Every script receives the fixed queue keys (swarmctl.keys.QUEUE_KEYS) as
KEYS[1..10]:

    KEYS[1] ready zset      KEYS[2] needed set     KEYS[3] delegated set
    KEYS[4] built set       KEYS[5] failed set     KEYS[6] blocked set
    KEYS[7] events stream   KEYS[8] heartbeats     KEYS[9] stats hash
    KEYS[10] arrival sequence counter

Per-job and per-drone keys are built by the generated PRELUDE from the
prefixes in swarmctl.keys. Time is always Redis's own clock (TIME), so drones
with skewed clocks cannot disagree about who is offline.
"""

from __future__ import annotations

from typing import Any

import redis

from swarmctl import keys
from swarmctl.targets import DEFAULT_TARGET, SEPARATOR

#: Argument checks every script makes before its first write: Redis does not roll back a script
#: that fails halfway (a NaN duration once left a job built and its dependents waiting forever).
#: Each returns nil when the argument is fine, else the refusal {'invalid', what}.
CHECKS = """
local function refuse_arg(what, raw)
  return {'invalid', what .. ', got ' .. string.sub(tostring(raw), 1, 40)}
end
local function bad_number(i, what, low, whole)
  local v = tonumber(ARGV[i])
  if v == nil or v ~= v or v == math.huge or v == -math.huge or (low ~= nil and v < low)
      or (whole and v ~= math.floor(v)) then
    return refuse_arg(what .. ' must be a finite ' .. (whole and 'integer' or 'number')
                      .. (low ~= nil and (' >= ' .. low) or ''), ARGV[i])
  end
  return nil
end
-- {index, what, lowest, integer?} for each numeric argument.
local function bad_numbers(list)
  for _, c in ipairs(list) do
    local bad = bad_number(c[1], c[2], c[3], c[4])
    if bad then return bad end
  end
  return nil
end
local function bad_names(list)  -- {index, what}: arguments that must not be empty
  for _, c in ipairs(list) do
    if ARGV[c[1]] == nil or ARGV[c[1]] == '' then return {'invalid', c[2] .. ' is empty'} end
  end
  return nil
end
-- A JSON list of non-empty strings: (list, nil), else (nil, refusal).
local function json_names(i, what)
  local ok, value = pcall(cjson.decode, ARGV[i])
  if not ok or type(value) ~= 'table' then return nil, refuse_arg(what .. ' must be a JSON list', ARGV[i]) end
  for _, name in ipairs(value) do
    if type(name) ~= 'string' or name == '' then return nil, refuse_arg(what .. ' must list names', ARGV[i]) end
  end
  return value, nil
end
"""

PRELUDE = CHECKS + f"""
redis.replicate_commands()
local JOB, DRONE = '{keys.JOB_PREFIX}', '{keys.DRONE_PREFIX}'
local function job_key(c) return JOB .. c end
local function gates_key(c) return JOB .. c .. '{keys.JOB_GATES}' end
local function dependents_key(c) return JOB .. c .. '{keys.JOB_DEPENDENTS}' end
local function needs_key(c) return JOB .. c .. '{keys.JOB_NEEDS}' end
local function holders_key(c) return JOB .. c .. '{keys.JOB_HOLDERS}' end
local function members_key(c) return JOB .. c .. '{keys.JOB_MEMBERS}' end
local function blame_key(c) return JOB .. c .. '{keys.JOB_BLAME}' end
local function avoid_key(c) return JOB .. c .. '{keys.JOB_AVOID}' end
local function tails_key(c) return JOB .. c .. '{keys.JOB_TAILS}' end
local function drone_key(n) return DRONE .. n end
local function drone_jobs_key(n) return DRONE .. n .. '{keys.DRONE_JOBS}' end
local function streak_key(n) return DRONE .. n .. '{keys.DRONE_STREAK}' end
-- A job's target and ready set come from its name (swarmctl.targets): 'CPV' is the default
-- target's, 'CPV@T' target T's, whose ready set is KEYS[1] .. '{keys.READY_TARGET}' .. T.
local function target_of(c) return string.match(c, '{SEPARATOR}([^{SEPARATOR}]+)$') or '{DEFAULT_TARGET}' end
local function ready_key(c)
  local t = string.match(c, '{SEPARATOR}([^{SEPARATOR}]+)$')
  if t then return KEYS[1] .. '{keys.READY_TARGET}' .. t end
  return KEYS[1]
end
local function bare_cpv(c) return (string.gsub(c, '{SEPARATOR}[^{SEPARATOR}]+$', '')) end
local STATE_SET = {{needed = KEYS[2], delegated = KEYS[3], built = KEYS[4], failed = KEYS[5],
                   blocked = KEYS[6], retired = '{keys.state_set("retired")}'}}
-- States that settle a job for what is gated on it (keys.SETTLED_STATES).
local SETTLED = {{{", ".join(f"{s} = true" for s in keys.SETTLED_STATES)}}}

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function emit(maxlen, kind, cpv, drone, reason)
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', maxlen, '*', 'ts', now_ms(), 'kind', kind,
             'job', cpv or '', 'drone', drone or '', 'reason', reason or '')
end

local function set_state(cpv, state)
  local old = redis.call('HGET', job_key(cpv), 'state')
  if old and STATE_SET[old] then redis.call('SREM', STATE_SET[old], cpv) end
  redis.call('SADD', STATE_SET[state], cpv)
  redis.call('HSET', job_key(cpv), 'state', state, 'updated', now_ms())
end

local function make_ready_if_free(cpv)
  local j = redis.call('HMGET', job_key(cpv), 'state', 'pending', 'priority')
  if j[1] == 'needed' and tonumber(j[2] or '0') <= 0 then
    redis.call('ZADD', ready_key(cpv), tonumber(j[3] or '0'), cpv)
  end
end

-- Back to needed, owned by nobody; claimable again once its gates are built.
local function requeue(cpv, drone)
  redis.call('SREM', drone_jobs_key(drone), cpv)
  set_state(cpv, 'needed')
  redis.call('HSET', job_key(cpv), 'drone', '', 'lease', '', 'reclaimed_from', drone)
  make_ready_if_free(cpv)
end

-- A job's settle group (swarmctl.graph): itself unless it shares a cycle of run/post edges.
local function group_of(cpv) return redis.call('HGET', job_key(cpv), 'group') or cpv end

-- Is a settle group open (a member unbuilt, or a group it needs open)? Not a job: no.
local function open_group(name)
  local j = redis.call('HMGET', job_key(name), 'unsettled', 'state')
  if j[1] then return tonumber(j[1]) > 0 end
  if j[2] then return not SETTLED[j[2]] end  -- queued before settle groups were stored
  return false
end

-- Gate 'cpv' on each of 'gates' (never on itself); returns how many are in open settle groups:
-- the job's pending count.
local function gate_on(cpv, gates)
  local pending = 0
  for _, gate in ipairs(gates) do
    if gate ~= cpv and redis.call('SADD', gates_key(cpv), gate) == 1 then
      redis.call('SADD', dependents_key(gate), cpv)
      if redis.call('HEXISTS', job_key(gate), 'state') == 1 and open_group(group_of(gate)) then
        pending = pending + 1
      end
    end
  end
  return pending
end

-- nil when the drone may act, else the refusal.
local function refuse_drone(name, token_sha)
  local d = redis.call('HMGET', drone_key(name), 'token_sha256', 'revoked')
  if not d[1] or d[1] ~= token_sha or d[2] == '1' then return 'unauthorized' end
  return nil
end

local function owns(cpv, drone, lease)
  local j = redis.call('HMGET', job_key(cpv), 'state', 'drone', 'lease')
  return j[1] == 'delegated' and j[2] == drone and j[3] == lease and lease ~= ''
end

-- A claim session is '<start ms>-<random>': the drone process's start, to order sessions.
local function session_start(s)
  return tonumber(string.match(s or '', '^(%d+)') or '0') or 0
end

local function stale(cpv, drone, what, maxlen)
  redis.call('HINCRBY', KEYS[9], 'stale', 1)
  emit(maxlen, 'stale', cpv, drone, what .. ' from a drone that does not own the job; ignored')
end

-- A settle group 'holder' counts 'member' (a job it needs) as open again; a holder that was
-- settled is open from now on and goes to 'reopened' (never 'skip', the caller's own group).
local function reopen_need(holder, member, skip, reopened)
  if holder ~= skip and redis.call('SISMEMBER', needs_key(holder), member) == 1
      and redis.call('HINCRBY', job_key(holder), 'unsettled', 1) == 1 then
    table.insert(reopened, holder)
  end
end

-- One member fewer keeps its settle group open; a group that settles releases the jobs gated on
-- its members and counts down the groups that need it, which may settle in turn.
local function count_down(group)
  local left = tonumber(redis.call('HGET', job_key(group), 'unsettled') or '1') - 1
  redis.call('HSET', job_key(group), 'unsettled', left)
  return left <= 0
end
-- Walk settle groups breadth first from `groups` (a list the callbacks may append to): for each
-- member of each group, on_gated(dep) for every job gated on that member, then
-- on_holder(holder, member) for every group that needs it.
local function walk_groups(groups, on_gated, on_holder)
  local i = 1
  while groups[i] do
    local group = groups[i]
    i = i + 1
    local members = redis.call('SMEMBERS', members_key(group))
    if #members == 0 then members = {{group}} end
    for _, member in ipairs(members) do
      for _, dep in ipairs(redis.call('SMEMBERS', dependents_key(member))) do
        if redis.call('SISMEMBER', gates_key(dep), member) == 1 then on_gated(dep) end
      end
      for _, holder in ipairs(redis.call('SMEMBERS', holders_key(member))) do
        on_holder(holder, member)
      end
    end
  end
end
-- A job built or retired: settle it for what is gated on it.
local function settle(cpv)
  local settled = {{}}
  if count_down(group_of(cpv)) then settled[1] = group_of(cpv) end
  walk_groups(settled, function(dep)
    redis.call('HINCRBY', job_key(dep), 'pending', -1)
    make_ready_if_free(dep)
  end, function(holder, member)
    if redis.call('SISMEMBER', needs_key(holder), member) == 1 and count_down(holder) then
      table.insert(settled, holder)
    end
  end)
end

-- Settle groups that were settled and are open again hold back every job gated on one of their
-- members, and reopen the groups that need those members, transitively.
local function hold_back(reopened, skip)
  walk_groups(reopened, function(dep)
    redis.call('HINCRBY', job_key(dep), 'pending', 1)
    redis.call('ZREM', ready_key(dep), dep)
  end, function(holder, member)
    reopen_need(holder, member, skip, reopened)
  end)
end
"""

ADD = PRELUDE + """
-- Add one job. ARGV[1] cpv, ARGV[2] estimate s, ARGV[3] priority score ('': -seq, fifo),
-- ARGV[4] build deps JSON, ARGV[5] run deps JSON, ARGV[6] gates JSON list (build deps it waits
-- for, each until settled), ARGV[7] events max, ARGV[8] post deps JSON, ARGV[9] its settle group
-- ('' when alone), ARGV[10] JSON list of the jobs its group's run/post edges name (outside it).
-- ARGV[11] why it is built ('' when not said: kept as its reason and in the 'added' event).
-- KEYS[11] the listing zset (every job by -priority, for paged listing).
-- ARGV[12] (optional) its needs: '<memory MiB> <disk MiB>' ('' or absent: unknown), recorded as the
-- job's 'mem'/'disk' and, when it states any, in KEYS[12] (the needs zset, by memory) and
-- KEYS[13] (by disk).
-- ARGV[13] where its estimate came from when not its own target's history ('' otherwise),
-- ARGV[14] the revision of the tree it was planned from ('' unknown). Its target is in its name.
-- Returns {'added', pending} | {'exists', state} | {'invalid', what}.
local cpv = ARGV[1]
local bad = bad_names({{1, 'cpv'}}) or bad_numbers({{2, 'estimate', 0}, {7, 'events max', 1, true}})
if not bad and ARGV[3] ~= '' then bad = bad_number(3, 'priority') end
if bad then return bad end
local lists = {}
for _, a in ipairs({{4, 'build deps'}, {5, 'run deps'}, {6, 'gates'}, {8, 'post deps'}, {10, 'needs'}}) do
  local list, refusal = json_names(a[1], a[2])
  if refusal then return refusal end
  lists[a[1]] = list
end
local need_mem, need_disk = string.match(ARGV[12] or '', '^(%d+) (%d+)$')
if (ARGV[12] or '') ~= '' and not need_mem then return refuse_arg('needs must be "<MiB> <MiB>"', ARGV[12]) end
local jk = job_key(cpv)
local state = redis.call('HGET', jk, 'state')
if state then return {'exists', state} end
local group = ARGV[9]
if group == '' then group = cpv end
local seq = redis.call('INCR', KEYS[10])
local score = ARGV[3]
if score == '' then score = tostring(-seq) end
local now = now_ms()
redis.call('HSET', jk, 'cpv', cpv, 'attempts', 0, 'estimate', ARGV[2], 'priority', score,
           'seq', seq, 'created', now, 'after', ARGV[4], 'run', ARGV[5], 'post', ARGV[8],
           'drone', '', 'lease', '', 'group', group, 'reason', ARGV[11] or '')
if (ARGV[13] or '') ~= '' then redis.call('HSET', jk, 'estimate_note', ARGV[13]) end
if (ARGV[14] or '') ~= '' then redis.call('HSET', jk, 'tree', ARGV[14]) end
redis.call('ZADD', KEYS[11], -tonumber(score), cpv)
if need_mem then
  redis.call('HSET', jk, 'mem', need_mem, 'disk', need_disk)
  redis.call('ZADD', KEYS[12], tonumber(need_mem), cpv)
  if KEYS[13] then redis.call('ZADD', KEYS[13], tonumber(need_disk), cpv) end
end
local pending = gate_on(cpv, lists[6])
redis.call('HSET', jk, 'pending', pending)
-- Its group is open while it is unbuilt, and while a job its run/post edges name is in an open
-- group (a job named before it is queued counts once it is).
if ARGV[9] ~= '' then redis.call('SADD', members_key(group), cpv) end
redis.call('HINCRBY', job_key(group), 'unsettled', 1)
for _, need in ipairs(lists[10]) do
  if redis.call('SADD', needs_key(group), need) == 1 then
    redis.call('SADD', holders_key(need), group)
    if redis.call('HEXISTS', job_key(need), 'state') == 1 and open_group(group_of(need)) then
      redis.call('HINCRBY', job_key(group), 'unsettled', 1)
    end
  end
end
-- Groups that named this job before it was queued wait for it now; one that was settled is open
-- again, and so is everything that waited on it (transitively).
local reopened = {}
for _, holder in ipairs(redis.call('SMEMBERS', holders_key(cpv))) do reopen_need(holder, cpv, group, reopened) end
hold_back(reopened, group)
-- Jobs that named this one before it existed now wait for it too.
for _, dep in ipairs(redis.call('SMEMBERS', dependents_key(cpv))) do
  if redis.call('SISMEMBER', gates_key(dep), cpv) == 1 then
    redis.call('HINCRBY', job_key(dep), 'pending', 1)
    redis.call('ZREM', ready_key(dep), dep)
  end
end
set_state(cpv, 'needed')
make_ready_if_free(cpv)
emit(ARGV[7], 'added', cpv, '', ARGV[11] or '')
return {'added', pending}
"""

CLAIM = PRELUDE + """
-- Hand the best ready job to a drone. ARGV[1] drone, ARGV[2] token sha256, ARGV[3] new lease,
-- ARGV[4] how many ready jobs to look at, ARGV[5] offline threshold ms, ARGV[6] events max,
-- ARGV[7] the drone process's claim session, ARGV[8] the request's number in that session,
-- ARGV[9] (optional) the memory and ARGV[10] the build disk, in MiB, the drone can give a new
-- build now ('' or absent: any): a job needing more (its 'mem'/'disk') is left for another drone,
-- ARGV[11] (optional) the drone's speed: while a faster drone is idle, a slower one leaves it
-- the longest chain (the best job it could take) and takes the next,
-- ARGV[12] the targets the drone builds (space separated; '' or absent: the default target only):
-- it is never handed a job of another target, and they are recorded as its 'targets'.
-- Idempotent: a retry of the same request (its reply was lost) gets the job that request
-- already holds, with the same lease, instead of a second job.
-- Returns {'ok', job, lease, estimate, attempts, tree, priority (its critical-path chain, s)}
-- | {'empty'} | {'grounded', until_ms}
-- | {'unauthorized'} | {'invalid', what}.
local name = ARGV[1]
local bad = bad_names({{1, 'drone'}, {7, 'claim session'}})
  or bad_numbers({{4, 'claim scan', 1, true}, {5, 'offline threshold', 0}, {6, 'events max', 1, true},
                  {8, 'claim request number', 1, true}})
if bad then return bad end
local refusal = refuse_drone(name, ARGV[2])
if refusal then return {refusal} end
local session, seq = ARGV[7], ARGV[8]
local request = session .. ':' .. seq
local last = redis.call('HMGET', drone_key(name), 'claim_request', 'claim_job')
if last[1] == request and last[2] then
  local j = redis.call('HMGET', job_key(last[2]), 'state', 'drone', 'lease', 'estimate', 'attempts',
                       'claim_session', 'claim_seq')
  if j[1] == 'delegated' and j[2] == name and j[6] == session and j[7] == seq then
    emit(ARGV[6], 'claim_replayed', last[2], name, 'a retried claim got the job its lost reply held')
    local extra = redis.call('HMGET', job_key(last[2]), 'tree', 'priority')
    return {'ok', last[2], j[3], j[4] or '0', j[5] or '0', extra[1] or '', extra[2] or '0'}
  end
end
local targets = {}
for t in string.gmatch(ARGV[12] or '', '%S+') do
  if not string.match(t, '^[%l%d][%l%d_-]*$') then return refuse_arg('targets must be target names', ARGV[12]) end
  table.insert(targets, t)
end
if #targets == 0 then targets = {'""" + DEFAULT_TARGET + """'} end
redis.call('HSET', drone_key(name), 'targets', table.concat(targets, ' '))
local now = now_ms()
local grounded = tonumber(redis.call('HGET', drone_key(name), 'grounded_until') or '0')
if grounded > now then return {'grounded', tostring(grounded)} end

-- Is there another healthy drone that could take this job instead of us? (Not one that claims
-- nothing for now: misconfigured or low on disk.)
local healthy = nil
local function other_could_take(cpv)
  if healthy == nil then
    healthy = {}
    for _, other in ipairs(redis.call('ZRANGEBYSCORE', KEYS[8], now - tonumber(ARGV[5]), '+inf')) do
      local d = redis.call('HMGET', drone_key(other), 'grounded_until', 'revoked', 'status', 'targets')
      if other ~= name and tonumber(d[1] or '0') <= now and d[2] ~= '1' and d[3] ~= 'misconfigured'
          and d[3] ~= 'low-disk' then
        table.insert(healthy, {other, ' ' .. (d[4] or '""" + DEFAULT_TARGET + """') .. ' '})
      end
    end
  end
  local wanted = ' ' .. target_of(cpv) .. ' '
  for _, other in ipairs(healthy) do
    if string.find(other[2], wanted, 1, true) and redis.call('SISMEMBER', avoid_key(cpv), other[1]) == 0 then
      return true
    end
  end
  return false
end

-- Does the job's stated or learned peak fit what the drone has free now?
local mem_free, disk_free = tonumber(ARGV[9] or ''), tonumber(ARGV[10] or '')
local function fits(cpv)
  if not mem_free and not disk_free then return true end
  local need = redis.call('HMGET', job_key(cpv), 'mem', 'disk')
  return (tonumber(need[1] or '0') or 0) <= (mem_free or math.huge)
    and (tonumber(need[2] or '0') or 0) <= (disk_free or math.huge)
end

-- Is a faster drone idle that could take this job (its memory holds the job's need)?
local my_speed = tonumber(ARGV[11] or '')
local function faster_idle(cpv)
  if not my_speed then return false end
  other_could_take(cpv)  -- fills the healthy list
  local need = tonumber(redis.call('HGET', job_key(cpv), 'mem') or '0') or 0
  local wanted = ' ' .. target_of(cpv) .. ' '
  for _, entry in ipairs(healthy) do
    local other = entry[1]
    local d = redis.call('HMGET', drone_key(other), 'status', 'speed', 'mem_total')
    if d[1] == 'idle' and (tonumber(d[2] or '') or 0) > my_speed and need <= (tonumber(d[3] or '') or math.huge)
        and string.find(entry[2], wanted, 1, true) and redis.call('SISMEMBER', avoid_key(cpv), other) == 0 then
      return true
    end
  end
  return false
end

-- The best ARGV[4] ready jobs of each of the drone's targets, best first across them.
local candidates = {}
local seen_target = {}
for _, t in ipairs(targets) do
  if not seen_target[t] then
    seen_target[t] = true
    local key = KEYS[1]
    if t ~= '""" + DEFAULT_TARGET + """' then key = KEYS[1] .. '""" + keys.READY_TARGET + """' .. t end
    local found = redis.call('ZREVRANGE', key, 0, tonumber(ARGV[4]) - 1, 'WITHSCORES')
    for i = 1, #found, 2 do table.insert(candidates, {found[i], tonumber(found[i + 1])}) end
  end
end
if #targets > 1 then
  table.sort(candidates, function(a, b)
    if a[2] ~= b[2] then return a[2] > b[2] end
    return a[1] > b[1]  -- ZREVRANGE's own order among equal scores
  end)
end
local chosen, fallback, passed = nil, nil, false
for _, c in ipairs(candidates) do
  local cpv = c[1]
  if fits(cpv) then
    if redis.call('SISMEMBER', avoid_key(cpv), name) == 0 then
      if passed or not faster_idle(cpv) then chosen = cpv; break end
      passed = true  -- the longest chain waits for the faster drone
    elseif fallback == nil and not other_could_take(cpv) then fallback = cpv end
  end
end
chosen = chosen or fallback
if not chosen then return {'empty'} end

local jk = job_key(chosen)
redis.call('ZREM', ready_key(chosen), chosen)
set_state(chosen, 'delegated')
local attempts = redis.call('HINCRBY', jk, 'attempts', 1)
redis.call('HSET', jk, 'drone', name, 'lease', ARGV[3], 'claimed_at', now, 'claim_session', session,
           'claim_seq', seq)
redis.call('HSET', drone_key(name), 'claim_request', request, 'claim_job', chosen)
redis.call('SADD', drone_jobs_key(name), chosen)
emit(ARGV[6], 'claimed', chosen, name, '')
local extra = redis.call('HMGET', jk, 'estimate', 'tree', 'priority')
return {'ok', chosen, ARGV[3], extra[1] or '0', tostring(attempts), extra[2] or '', extra[3] or '0'}
"""

COMPLETE = PRELUDE + """
-- A drone reports a job built. KEYS[11] the package's build history list.
-- ARGV[1] cpv, ARGV[2] drone, ARGV[3] token sha256, ARGV[4] lease,
-- ARGV[5] duration s, ARGV[6] artifact JSON, ARGV[7] events max, ARGV[8] history entries kept,
-- ARGV[9] (optional) what the build used: '<peak RSS bytes> <disk bytes>' (0: not measured),
-- kept in the history beside the duration.
-- Returns {'ok'} | {'stale'} | {'unauthorized'} | {'invalid', what}.
local cpv, name, lease = ARGV[1], ARGV[2], ARGV[4]
local bad = bad_names({{1, 'cpv'}, {2, 'drone'}})
  or bad_numbers({{5, 'duration', 0}, {7, 'events max', 1, true}, {8, 'history kept', 1, true}})
if bad then return bad end
local ok, artifact = pcall(cjson.decode, ARGV[6])
if not ok or type(artifact) ~= 'table' then return refuse_arg('artifact must be a JSON object', ARGV[6]) end
local peak_rss, peak_disk = string.match(ARGV[9] or '', '^(%d+) (%d+)$')
if (ARGV[9] or '') ~= '' and not peak_rss then return refuse_arg('usage must be "<bytes> <bytes>"', ARGV[9]) end
local refusal = refuse_drone(name, ARGV[3])
if refusal then return {refusal} end
if not owns(cpv, name, lease) then stale(cpv, name, 'completion', ARGV[7]); return {'stale'} end
local jk = job_key(cpv)
redis.call('SREM', drone_jobs_key(name), cpv)
set_state(cpv, 'built')
redis.call('HSET', jk, 'drone', '', 'lease', '', 'built_by', name, 'finished_at', now_ms(),
           'duration', ARGV[5], 'artifact', ARGV[6])
-- A success ends the drone's failure streak and its grounding backoff.
redis.call('HSET', drone_key(name), 'failures', 0, 'groundings', 0)
redis.call('HINCRBY', drone_key(name), 'built', 1)
redis.call('DEL', streak_key(name))
redis.call('HINCRBY', KEYS[9], 'built', 1)
local record = {cpv = bare_cpv(cpv), seconds = tonumber(ARGV[5]), parallel = false, source = 'swarm',
                target = target_of(cpv)}
if peak_rss and tonumber(peak_rss) > 0 then record.peak_rss = tonumber(peak_rss) end
if peak_disk and tonumber(peak_disk) > 0 then record.disk = tonumber(peak_disk) end
redis.call('LPUSH', KEYS[11], cjson.encode(record))
redis.call('LTRIM', KEYS[11], 0, tonumber(ARGV[8]) - 1)
settle(cpv)
emit(ARGV[7], 'built', cpv, name, ARGV[5])
return {'ok'}
"""

FAIL = PRELUDE + """
-- A drone reports a job failed. ARGV[1] cpv, ARGV[2] drone, ARGV[3] token sha256, ARGV[4] lease,
-- ARGV[5] fault (build|drone|dependency|hung), ARGV[6] reason, ARGV[7] log tail,
-- ARGV[8] drones that block a package, ARGV[9] max attempts, ARGV[10] failures that ground,
-- ARGV[11] grounding ms, ARGV[12] backoff factor, ARGV[13] longest grounding ms, ARGV[14] events max.
-- Returns {outcome, grounded_until} with outcome requeued | failed | blocked, or {'stale'}
-- | {'unauthorized'} | {'invalid', what}.
local cpv, name, lease, fault = ARGV[1], ARGV[2], ARGV[4], ARGV[5]
local maxlen = ARGV[14]
local bad = bad_names({{1, 'cpv'}, {2, 'drone'}}) or bad_numbers({
  {8, 'drones that block', 1, true}, {9, 'max attempts', 1, true}, {10, 'failures that ground', 1, true},
  {11, 'grounding ms', 0}, {12, 'backoff factor', 1}, {13, 'longest grounding ms', 0},
  {14, 'events max', 1, true}})
if bad then return bad end
if not ({build = true, drone = true, dependency = true, hung = true})[fault] then
  return refuse_arg('fault must be build, drone, dependency or hung', fault)
end
local refusal = refuse_drone(name, ARGV[3])
if refusal then return {refusal} end
if not owns(cpv, name, lease) then stale(cpv, name, 'failure report', maxlen); return {'stale'} end
local jk, dk = job_key(cpv), drone_key(name)
redis.call('SREM', drone_jobs_key(name), cpv)
redis.call('HSET', jk, 'drone', '', 'lease', '', 'reason', ARGV[6], 'last_fault', fault,
           'last_failed_by', name)
redis.call('SADD', avoid_key(cpv), name)
redis.call('HINCRBY', KEYS[9], 'failures', 1)

if fault == 'build' then
  redis.call('SADD', blame_key(cpv), name)
  redis.call('HSET', tails_key(cpv), name, ARGV[7])
  if redis.call('SCARD', blame_key(cpv)) >= tonumber(ARGV[8]) then
    -- The package's fault: it does not count against this drone, and the earlier
    -- failures on other drones are taken back from their streaks.
    for _, other in ipairs(redis.call('SMEMBERS', blame_key(cpv))) do
      if other ~= name and redis.call('SREM', streak_key(other), cpv) == 1 then
        local f = tonumber(redis.call('HGET', drone_key(other), 'failures') or '0')
        if f > 0 then redis.call('HSET', drone_key(other), 'failures', f - 1) end
      end
    end
    set_state(cpv, 'blocked')
    emit(maxlen, 'blocked', cpv, name, 'failed on ' .. redis.call('SCARD', blame_key(cpv)) .. ' drones')
    return {'blocked', '0'}
  end
end

local attempts = tonumber(redis.call('HGET', jk, 'attempts') or '0')
local outcome = 'requeued'
if fault == 'drone' then
  -- This drone's environment failed, not the package: the attempt does not count (the breaker
  -- below does), so a misconfigured drone never gets a package marked failed.
  redis.call('HINCRBY', jk, 'attempts', -1)
  requeue(cpv, name)
elseif attempts >= tonumber(ARGV[9]) then
  set_state(cpv, 'failed')
  outcome = 'failed'
else
  requeue(cpv, name)
end
emit(maxlen, outcome == 'failed' and 'failed' or 'requeued', cpv, name, fault .. ': ' .. ARGV[6])

-- Circuit breaker.
redis.call('SADD', streak_key(name), cpv)
local failures = redis.call('HINCRBY', dk, 'failures', 1)
if failures < tonumber(ARGV[10]) then return {outcome, '0'} end
local now = now_ms()
local n = redis.call('HINCRBY', dk, 'groundings', 1)
local span = math.min(tonumber(ARGV[11]) * tonumber(ARGV[12]) ^ (n - 1), tonumber(ARGV[13]))
local grounded_until = now + math.floor(span)
redis.call('HSET', dk, 'grounded_until', grounded_until, 'failures', 0, 'grounded_at', now)
-- The streak was the drone's fault: take the blame off those packages.
for _, failed in ipairs(redis.call('SMEMBERS', streak_key(name))) do
  redis.call('SREM', blame_key(failed), name)
end
redis.call('DEL', streak_key(name))
for _, held in ipairs(redis.call('SMEMBERS', drone_jobs_key(name))) do
  requeue(held, name)
  emit(maxlen, 'reclaimed', held, name, 'drone grounded')
end
redis.call('HINCRBY', KEYS[9], 'groundings', 1)
emit(maxlen, 'grounded', '', name, failures .. ' consecutive failures; grounded for ' ..
     math.floor(span / 1000) .. ' s')
return {outcome, tostring(grounded_until)}
"""

RELEASE = PRELUDE + """
-- A drone gives a job back unbuilt (aborted on shutdown). ARGV[1] cpv, ARGV[2] drone,
-- ARGV[3] token sha256, ARGV[4] lease, ARGV[5] reason, ARGV[6] events max, ARGV[7] '' or why this
-- drone cannot build it as planned (e.g. 'tree-mismatch'): then it is not handed the job again while
-- another drone could take it, the kind is counted in the stats and emitted as an event.
-- Returns {'ok'} | {'stale'} | {'unauthorized'} | {'invalid', what}.
local cpv, name = ARGV[1], ARGV[2]
local bad = bad_names({{1, 'cpv'}, {2, 'drone'}}) or bad_number(6, 'events max', 1, true)
if not bad and not string.match(ARGV[7] or '', '^[%l-]*$') then bad = refuse_arg('cannot must be a kind', ARGV[7]) end
if bad then return bad end
local refusal = refuse_drone(name, ARGV[3])
if refusal then return {refusal} end
if not owns(cpv, name, ARGV[4]) then stale(cpv, name, 'release', ARGV[6]); return {'stale'} end
requeue(cpv, name)
-- Not a failure: the attempt does not count.
redis.call('HINCRBY', job_key(cpv), 'attempts', -1)
local cannot = ARGV[7] or ''
if cannot ~= '' then
  redis.call('SADD', avoid_key(cpv), name)
  redis.call('HINCRBY', KEYS[9], cannot, 1)
  emit(ARGV[6], cannot, cpv, name, ARGV[5])
end
emit(ARGV[6], 'released', cpv, name, ARGV[5])
return {'ok'}
"""

RECLAIM = PRELUDE + """
-- Take every job back from a drone. ARGV[1] drone, ARGV[2] offline threshold ms (0: do it
-- regardless of heartbeats), ARGV[3] reason, ARGV[4] events max.
-- Returns the reclaimed CPVs; none when the drone heartbeated within the threshold, which is
-- re-checked here so a drone that just came back keeps its work; {'invalid', what} on bad arguments.
local name = ARGV[1]
local bad = bad_names({{1, 'drone'}}) or bad_numbers({{2, 'offline threshold ms', 0}, {4, 'events max', 1, true}})
if bad then return bad end
local threshold = tonumber(ARGV[2])
if threshold > 0 then
  local seen = tonumber(redis.call('ZSCORE', KEYS[8], name) or '0')
  if seen >= now_ms() - threshold then return {} end
end
local taken = {}
for _, cpv in ipairs(redis.call('SMEMBERS', drone_jobs_key(name))) do
  local j = redis.call('HMGET', job_key(cpv), 'state', 'drone')
  if j[1] == 'delegated' and j[2] == name then
    requeue(cpv, name)
    redis.call('HINCRBY', KEYS[9], 'reclaimed', 1)
    emit(ARGV[4], 'reclaimed', cpv, name, ARGV[3])
    table.insert(taken, cpv)
  else
    redis.call('SREM', drone_jobs_key(name), cpv)
  end
end
return taken
"""

#: The only fields a drone's heartbeat may write into its record (never its token, its
#: recorded machine id, its breaker state or its grounding).
HEARTBEAT_FIELDS = ("status", "task", "task_started", "cpu", "mem", "hung", "host", "pid", "version",
                    "machine_id_seen", "clock", "problem", "disk_free_build", "disk_free_pkgdir",
                    # every current build (JSON), and the drone's capacity (swarmctl.drone.slots)
                    "tasks", "slots", "mem_total", "speed", "cores", "disk_total",
                    # the build targets it builds and the revision of its tree (swarmctl.targets, .tree)
                    "targets", "tree")

# -- heartbeat field hygiene (the drone is untrusted: checked here, where Redis writes) -------------
#: Longest value kept for each drone-written field, in bytes; any other field: DEFAULT_FIELD_MAX.
HEARTBEAT_FIELD_MAX = {"status": 16, "task": 256, "task_started": 32, "cpu": 16, "mem": 16, "hung": 1,
                       "host": 253, "pid": 16, "version": 64, "machine_id_seen": 64, "clock": 32,
                       "problem": 512, "disk_free_build": 20, "disk_free_pkgdir": 20,
                       "tasks": 8192, "slots": 8, "mem_total": 16, "speed": 16, "cores": 8, "disk_total": 16,
                       "targets": 512, "tree": 128,
                       # the jobs a drone says it holds, and its claim session (see RECONCILE)
                       "held": 4096, "held_session": 64}
DEFAULT_FIELD_MAX = 256

CLEAN_FIELD = """
-- A drone-written value made safe to store, decode and print: every field is ASCII by nature (a CPV,
-- a host name, numbers, a version), so anything but printable ASCII goes: escapes and other control
-- characters, C1 controls, bidi overrides, bytes that are not UTF-8 (which would break every
-- reader that decodes). Then the value is capped to the field's limit.
local field_max = {""" + ", ".join(f"['{k}'] = {v}" for k, v in HEARTBEAT_FIELD_MAX.items()) + """}
local function clean_field(field, value)
  value = string.gsub(value, '[^\\32-\\126]', '')
  return string.sub(value, 1, field_max[field] or """ + str(DEFAULT_FIELD_MAX) + """)
end
"""
# -- end of heartbeat field hygiene -----------------------------------------------------------------

HEARTBEAT = PRELUDE + CLEAN_FIELD + """
-- A drone's heartbeat. ARGV[1] drone, ARGV[2] token sha256, ARGV[3] the jobs it holds (CPVs,
-- space separated; '' if none), ARGV[4] their leases (same order), ARGV[5] events max,
-- ARGV[6] its claim session, ARGV[7] the number of its last settled claim request (every
-- request up to it has had its reply handled: a job it got is in ARGV[3] or already reported),
-- ARGV[8..] field/value pairs for the drone hash (only the HEARTBEAT_FIELDS are written;
-- anything else is dropped).
-- The held jobs are recorded (held, held_session, held_settled) for RECONCILE, unless an older
-- session's heartbeat arrives after a newer one's.
-- Returns {'ok', grounded_until, server_ms, owned} with owned one '1'/'0' per held job
-- | {'unauthorized'} | {'invalid', what}.
local name, session = ARGV[1], ARGV[6]
local bad = bad_names({{1, 'drone'}})
  or bad_numbers({{5, 'events max', 1, true}, {7, 'settled claim request', 0, true}})
if bad then return bad end
local refusal = refuse_drone(name, ARGV[2])
if refusal then return {refusal} end
local now = now_ms()
local dk = drone_key(name)
local allowed = {""" + ", ".join(f"['{f}'] = true" for f in HEARTBEAT_FIELDS) + """}
local fields = {}
for i = 8, #ARGV - 1, 2 do
  if allowed[ARGV[i]] then table.insert(fields, ARGV[i]); table.insert(fields, clean_field(ARGV[i], ARGV[i + 1])) end
end
if #fields > 0 then redis.call('HSET', dk, unpack(fields)) end
redis.call('HSET', dk, 'last_seen', now)
redis.call('ZADD', KEYS[8], now, name)
local held, leases = {}, {}
for c in string.gmatch(ARGV[3], '%S+') do table.insert(held, c) end
for l in string.gmatch(ARGV[4], '%S+') do table.insert(leases, l) end
if session ~= '' then
  local recorded = redis.call('HGET', dk, 'held_session')
  if not recorded or session_start(session) >= session_start(recorded) then
    redis.call('HSET', dk, 'held', clean_field('held', ARGV[3]), 'held_session', clean_field('held_session', session),
               'held_settled', tonumber(ARGV[7]) or 0, 'held_at', now)
  end
end
local owned = {}
for i, cpv in ipairs(held) do
  local lease = leases[i] or ''
  if lease == '-' then lease = '' end  -- the placeholder for a job held without a lease
  local mine = '0'
  if owns(cpv, name, lease) then
    mine = '1'
  else
    -- Back after being declared offline, still building a job nobody else took: keep it.
    local j = redis.call('HMGET', job_key(cpv), 'state', 'reclaimed_from', 'pending')
    if j[1] == 'needed' and j[2] == name and tonumber(j[3] or '0') <= 0 and lease ~= '' then
      redis.call('ZREM', ready_key(cpv), cpv)
      set_state(cpv, 'delegated')
      redis.call('HSET', job_key(cpv), 'drone', name, 'lease', lease)
      redis.call('SADD', drone_jobs_key(name), cpv)
      emit(ARGV[5], 'reattached', cpv, name, 'drone came back still building it')
      mine = '1'
    end
  end
  table.insert(owned, mine)
end
return {'ok', redis.call('HGET', dk, 'grounded_until') or '0', tostring(now), table.concat(owned)}
"""

RECONCILE = PRELUDE + """
-- Give back the jobs delegated to a drone that its heartbeats say it does not hold.
-- ARGV[1] drone, ARGV[2] events max. A job claimed by request n of session s is judged only
-- by a heartbeat that proves the reply was handled: one of session s with settled >= n (the job
-- would be listed if the drone had it), or one of a session started later (a new process,
-- which never holds an older one's jobs). A claim still in flight is never judged, whatever the
-- timing of its reply against the heartbeats. Jobs without a session (claimed by an older
-- version) are left to the offline reclaim.
-- Returns the reclaimed CPVs | {'invalid', what}.
local name = ARGV[1]
local bad = bad_names({{1, 'drone'}}) or bad_numbers({{2, 'events max', 1, true}})
if bad then return bad end
local d = redis.call('HMGET', drone_key(name), 'held', 'held_session', 'held_settled')
if not d[2] or d[2] == '' then return {} end
local held = {}
for c in string.gmatch(d[1] or '', '%S+') do held[c] = true end
local settled = tonumber(d[3] or '0') or 0
local taken = {}
for _, cpv in ipairs(redis.call('SMEMBERS', drone_jobs_key(name))) do
  local j = redis.call('HMGET', job_key(cpv), 'state', 'drone', 'claim_session', 'claim_seq')
  if j[1] == 'delegated' and j[2] == name and not held[cpv] and j[3] and j[3] ~= '' then
    local orphan
    if j[3] == d[2] then
      orphan = (tonumber(j[4] or '0') or 0) <= settled
    else
      orphan = session_start(j[3]) < session_start(d[2])
    end
    if orphan then
      requeue(cpv, name)
      redis.call('HINCRBY', KEYS[9], 'reconciled', 1)
      emit(ARGV[2], 'reclaimed', cpv, name, 'live drone does not hold it (claim reply lost, or claimed ' ..
           'by a previous process); back to the queue')
      table.insert(taken, cpv)
    end
  end
end
return taken
"""

EMIT = """
-- Append one event stamped with Redis's clock. KEYS[1] events stream; ARGV[1] max length (approximate),
-- ARGV[2] kind, ARGV[3] job, ARGV[4] drone, ARGV[5] reason.
local t = redis.call('TIME')
local ts = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'ts', ts, 'kind', ARGV[2], 'job', ARGV[3],
                  'drone', ARGV[4], 'reason', ARGV[5])
"""

RESET = PRELUDE + """
-- Put a blocked or failed job back in the queue. ARGV[1] cpv, ARGV[2] allowed states
-- (space separated), ARGV[3] event kind, ARGV[4] events max.
-- Returns {'ok'} | {'missing'} | {'state', current} | {'invalid', what}.
local cpv = ARGV[1]
local bad = bad_names({{1, 'cpv'}, {2, 'allowed states'}, {3, 'event kind'}})
  or bad_number(4, 'events max', 1, true)
if bad then return bad end
local state = redis.call('HGET', job_key(cpv), 'state')
if not state then return {'missing'} end
if not string.find(' ' .. ARGV[2] .. ' ', ' ' .. state .. ' ', 1, true) then return {'state', state} end
redis.call('DEL', blame_key(cpv), avoid_key(cpv))
redis.call('HSET', job_key(cpv), 'attempts', 0, 'reason', '')
set_state(cpv, 'needed')
make_ready_if_free(cpv)
emit(ARGV[4], ARGV[3], cpv, '', 'by operator')
return {'ok'}
"""

REBUILD = PRELUDE + """
-- Build a built job again: the binhost's binary of it is stale (swarmctl.resolver). ARGV[1] cpv,
-- ARGV[2] why (kept as its reason and in the 'rebuild' event), ARGV[3] events max,
-- ARGV[4] build deps JSON, ARGV[5] run deps JSON, ARGV[6] post deps JSON, ARGV[7] gates JSON
-- (the graph's edges now: a rebuild waits for its rebuilt or new dependencies).
-- Its settle group is open again: whatever is gated on it waits for the rebuild.
-- Returns {'ok', pending} | {'missing'} | {'state', current} | {'invalid', what}.
local cpv = ARGV[1]
local bad = bad_names({{1, 'cpv'}, {2, 'reason'}}) or bad_number(3, 'events max', 1, true)
if bad then return bad end
local lists = {}
for _, a in ipairs({{4, 'build deps'}, {5, 'run deps'}, {6, 'post deps'}, {7, 'gates'}}) do
  local list, refusal = json_names(a[1], a[2])
  if refusal then return refusal end
  lists[a[1]] = list
end
local jk = job_key(cpv)
local state = redis.call('HGET', jk, 'state')
if not state then return {'missing'} end
if state ~= 'built' then return {'state', state} end
for _, gate in ipairs(redis.call('SMEMBERS', gates_key(cpv))) do
  redis.call('SREM', dependents_key(gate), cpv)
end
redis.call('DEL', gates_key(cpv), blame_key(cpv), avoid_key(cpv))
local group = group_of(cpv)
local pending = gate_on(cpv, lists[7])
redis.call('HSET', jk, 'attempts', 0, 'reason', ARGV[2], 'pending', pending, 'after', ARGV[4], 'run', ARGV[5],
           'post', ARGV[6], 'drone', '', 'lease', '')
set_state(cpv, 'needed')
if redis.call('HINCRBY', job_key(group), 'unsettled', 1) == 1 then hold_back({group}, '') end
make_ready_if_free(cpv)
emit(ARGV[3], 'rebuild', cpv, '', ARGV[2])
return {'ok', pending}
"""

RETREE = PRELUDE + """
-- A queue sync resolved from a new tree revision: its verdict on one job planned at another one.
-- ARGV[1] cpv, ARGV[2] the new revision, ARGV[3] 'present' or 'gone' (the job's CPV in the new
-- tree), ARGV[4] events max, ARGV[5] gates JSON (the new tree's edges it waits for; '' keeps its
-- gates). Only a job waiting (needed) or retired, planned at another recorded revision, changes:
-- a delegated one is built at the revision its drone was handed.
-- gone + needed: retired (out of the ready set, settled for whatever is gated on it, its reason,
-- the 'retired' event and stat); present + needed: it takes the new revision (and edges);
-- present + retired: needed again at the new revision (the 'restored' event).
-- Returns {'retired'} | {'restamped', pending} | {'restored', pending} | {'kept', state}
-- | {'missing'} | {'invalid', what}.
local cpv, revision, verdict = ARGV[1], ARGV[2], ARGV[3]
local bad = bad_names({{1, 'cpv'}, {2, 'revision'}}) or bad_number(4, 'events max', 1, true)
if not bad and verdict ~= 'present' and verdict ~= 'gone' then
  bad = refuse_arg("verdict must be 'present' or 'gone'", verdict)
end
if bad then return bad end
local gates = nil
if (ARGV[5] or '') ~= '' then
  local list, refusal = json_names(5, 'gates')
  if refusal then return refusal end
  gates = list
end
local jk = job_key(cpv)
local j = redis.call('HMGET', jk, 'state', 'tree')
local state, planned = j[1], j[2] or ''
if not state then return {'missing'} end
if planned == '' or planned == revision or (state ~= 'needed' and state ~= 'retired')
    or (state == 'retired' and verdict == 'gone') then
  return {'kept', state}
end
if verdict == 'gone' then
  local why = 'gone from the tree at ' .. revision .. ' (planned at ' .. planned .. ')'
  redis.call('ZREM', ready_key(cpv), cpv)
  set_state(cpv, 'retired')
  redis.call('HSET', jk, 'reason', why)
  settle(cpv)
  redis.call('HINCRBY', KEYS[9], 'retired', 1)
  emit(ARGV[4], 'retired', cpv, '', why)
  return {'retired'}
end
redis.call('HSET', jk, 'tree', revision)
if gates then
  for _, gate in ipairs(redis.call('SMEMBERS', gates_key(cpv))) do
    redis.call('SREM', dependents_key(gate), cpv)
  end
  redis.call('DEL', gates_key(cpv))
  redis.call('HSET', jk, 'pending', gate_on(cpv, gates))
end
local kind = 'restamped'
if state == 'retired' then
  kind = 'restored'
  set_state(cpv, 'needed')
  redis.call('HSET', jk, 'reason', 'back in the tree at ' .. revision)
  local group = group_of(cpv)
  if redis.call('HINCRBY', job_key(group), 'unsettled', 1) == 1 then hold_back({group}, '') end
  emit(ARGV[4], 'restored', cpv, '', 'back in the tree at ' .. revision)
end
local pending = tonumber(redis.call('HGET', jk, 'pending') or '0')
if pending > 0 then redis.call('ZREM', ready_key(cpv), cpv) else make_ready_if_free(cpv) end
return {kind, pending}
"""

PRIORITIES = PRELUDE + """
-- Read only: the priority score of each job in ARGV ('' for one not queued). One call answers for
-- thousands of jobs, far cheaper than as many HGETs.
local out = {}
for i, cpv in ipairs(ARGV) do out[i] = redis.call('HGET', job_key(cpv), 'priority') or '' end
return out
"""

PEEK = PRELUDE + """
-- Read only: each job in ARGV as {its hash as a flat field/value list, the drones it avoids}
-- ({{}, {}} for one not queued).
local out = {}
for i, cpv in ipairs(ARGV) do
  out[i] = {redis.call('HGETALL', job_key(cpv)), redis.call('SMEMBERS', avoid_key(cpv))}
end
return out
"""

REPAIR = PRELUDE + """
-- Make one job's derived bookkeeping agree with the facts (swarmctl.integrity): its state-set
-- membership with its hash, its settle group's 'unsettled' count (when it names a group) with its
-- members' states and the groups it needs, its 'pending' count with its gates' groups, and its
-- place in the ready set with both. ARGV[1] cpv, ARGV[2] events max.
-- Returns {what was wrong, ...} (empty when all agreed) | {'invalid', what}.
local cpv = ARGV[1]
local bad = bad_names({{1, 'cpv'}}) or bad_number(2, 'events max', 1, true)
if bad then return bad end
local jk = job_key(cpv)
local j = redis.call('HMGET', jk, 'state', 'pending', 'group', 'unsettled', 'priority')
local state = j[1]
local fixed = {}
for name, set in pairs(STATE_SET) do
  if name ~= state and redis.call('SREM', set, cpv) == 1 then
    table.insert(fixed, 'listed as ' .. name)
  end
end
if not state or not STATE_SET[state] then
  if redis.call('ZREM', ready_key(cpv), cpv) == 1 then table.insert(fixed, 'listed as ready') end
else
  if redis.call('SADD', STATE_SET[state], cpv) == 1 then table.insert(fixed, 'missing from ' .. state) end
  if (j[3] or cpv) == cpv and (j[4] or j[3]) then  -- names a settle group (stored since groups exist)
    local members = redis.call('SMEMBERS', members_key(cpv))
    if #members == 0 then members = {cpv} end
    local want = 0
    for _, m in ipairs(members) do
      if not SETTLED[redis.call('HGET', job_key(m), 'state')] then want = want + 1 end
    end
    for _, need in ipairs(redis.call('SMEMBERS', needs_key(cpv))) do
      if redis.call('HEXISTS', job_key(need), 'state') == 1 and open_group(group_of(need)) then
        want = want + 1
      end
    end
    if tonumber(j[4] or '-1') ~= want then
      redis.call('HSET', jk, 'unsettled', want)
      table.insert(fixed, 'unsettled ' .. tostring(j[4]) .. ' -> ' .. want)
    end
  end
  local pending = 0
  for _, gate in ipairs(redis.call('SMEMBERS', gates_key(cpv))) do
    if redis.call('HEXISTS', job_key(gate), 'state') == 1 and open_group(group_of(gate)) then
      pending = pending + 1
    end
  end
  if tonumber(j[2] or '-1') ~= pending then
    redis.call('HSET', jk, 'pending', pending)
    table.insert(fixed, 'pending ' .. tostring(j[2]) .. ' -> ' .. pending)
  end
  local ready = redis.call('ZSCORE', ready_key(cpv), cpv)
  if state == 'needed' and pending == 0 then
    if not ready then
      redis.call('ZADD', ready_key(cpv), tonumber(j[5] or '0') or 0, cpv)
      table.insert(fixed, 'missing from ready')
    end
  elseif ready then
    redis.call('ZREM', ready_key(cpv), cpv)
    table.insert(fixed, 'listed as ready')
  end
end
if #fixed > 0 then
  redis.call('HINCRBY', KEYS[9], 'repaired', 1)
  emit(ARGV[2], 'repaired', cpv, '', table.concat(fixed, '; '))
end
return fixed
"""

LEADER = CHECKS + """
-- Take or keep the orchestrator lease. KEYS[1] leader key; ARGV[1] candidate id, ARGV[2] ttl ms.
-- Returns 1 when the candidate holds the lease, else 0; {'invalid', what} on bad arguments.
local bad = bad_names({{1, 'candidate id'}}) or bad_number(2, 'ttl ms', 1, true)
if bad then return bad end
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]); return 1 end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

RESIGN = CHECKS + """
-- Give the lease up if held. KEYS[1] leader key; ARGV[1] candidate id.
local bad = bad_names({{1, 'candidate id'}})
if bad then return bad end
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Scripts:
    """The scripts registered on one connection (redis-py reloads them after NOSCRIPT)."""

    def __init__(self, client: redis.Redis) -> None:
        self.add = client.register_script(ADD)
        self.claim = client.register_script(CLAIM)
        self.complete = client.register_script(COMPLETE)
        self.fail = client.register_script(FAIL)
        self.release = client.register_script(RELEASE)
        self.reclaim = client.register_script(RECLAIM)
        self.heartbeat = client.register_script(HEARTBEAT)
        self.reconcile = client.register_script(RECONCILE)
        self.reset = client.register_script(RESET)
        self.rebuild = client.register_script(REBUILD)
        self.retree = client.register_script(RETREE)
        self.repair = client.register_script(REPAIR)
        self.priorities = client.register_script(PRIORITIES)
        self.peek = client.register_script(PEEK)
        self.leader = client.register_script(LEADER)
        self.resign = client.register_script(RESIGN)


def decode(reply: Any) -> Any:
    """Bytes from a script reply, recursively, as str."""
    if isinstance(reply, bytes):
        return reply.decode()
    if isinstance(reply, list):
        return [decode(item) for item in reply]
    return reply
