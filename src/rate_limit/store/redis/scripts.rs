//! The one Lua script every Redis decision and every local-first sync runs.
//!
//! A key is a hash. Field `t` holds the GCRA "theoretical arrival time" (TAT)
//! in microseconds of the Redis server's own clock (`TIME`), so replica clocks
//! never matter. Each local-first replica that touched the key keeps one more
//! field, named by its replica id: `"entry applied claim until_ms"`:
//!
//! - `entry applied`: the replica's local entry for the key and how many of
//!   its admissions are already merged. A sync sends the entry's running total;
//!   only what is above `applied` is charged, so a batch retried after a
//!   timeout (that may or may not have run) is never charged twice.
//! - `claim until_ms`: how many requests the replica may admit on its own,
//!   without asking, until `until_ms`. Claims are reserved, not spent: every
//!   decision, exact or local-first, sees the tokens left *minus the other
//!   replicas' live claims*, and a claim is at most the tokens left divided by
//!   the replicas holding one. So the replicas' own decisions together never
//!   spend more than the bucket holds, however many replicas there are.
//!
//! A call touches one key, or (a sync's [`SHARE_MANY`]) keys of one slot: no
//! `CROSSSLOT` on a cluster. A key that is not a hash (0.2 stored a string
//! TAT under the same name) is taken over, its TAT kept. Every
//! call takes a deadline on the server's clock (0: none) and does nothing past
//! it: work that arrives after the caller gave up spends nothing.

/// The steps for one key, as a Lua function both entry points call:
/// `share(key, t, tau, admit, me, entry, acked, total, cap, age, want, life,
/// keep, now, mode)` returns `outcome, remaining, ahead_us, retry_us, claim`.
/// `admit` is the units to decide now (0: none); `mode` says how: `take`
/// (all or nothing), `owe` (even past the bucket: debt) or `refund` (give
/// back, never past a full bucket).
macro_rules! share_fn {
    () => {
        r"
local function share(key, t, tau, admit, me, entry, acked, total, cap, age, want, life, keep, now, mode)
  local now_ms = math.floor(now / 1000)
  local tat = 0
  local fields = redis.pcall('HGETALL', key)
  if fields.err then
    -- Not a hash (a 0.2 string TAT under the same name): taken over.
    local old = redis.pcall('GET', key)
    if type(old) == 'string' then
      tat = tonumber(old) or 0
    end
    redis.call('DEL', key)
    fields = {}
  end
  local reserved = 0
  local others = 0
  local mine_entry = nil
  local mine_applied = 0
  local mine_claim = 0
  local mine_until = 0
  for i = 1, #fields, 2 do
    local name = fields[i]
    local value = fields[i + 1]
    if name == 't' then
      tat = tonumber(value) or 0
    else
      local e, a, c, u = string.match(value, '^(%d+) (%d+) (%d+) (%d+)$')
      if name == me and e then
        mine_entry = e
        mine_applied = tonumber(a)
        mine_claim = tonumber(c)
        mine_until = tonumber(u)
      elseif u and tonumber(u) > now_ms then
        reserved = reserved + tonumber(c)
        others = others + 1
      elseif me ~= '' and (not u or tonumber(u) + keep < now_ms) then
        redis.call('HDEL', key, name)
      end
    end
  end
  local applied = 0
  -- What this replica may still spend of its last claim while this call is
  -- on its way: it stays reserved, whatever the new claim.
  local holding = 0
  if me ~= '' then
    applied = acked
    if mine_entry == entry then
      if mine_applied > applied then
        applied = mine_applied
      end
      if mine_until > now_ms then
        holding = math.max(mine_claim - (total - mine_applied), 0)
      end
    end
    if total > applied then
      local n = math.min(total - applied, cap)
      tat = math.max(tat, now - age) + n * t
      applied = total
    end
  end
  -- A refund moves the arrival time back, never before now; it is
  -- written even when that leaves the bucket full.
  local moved = false
  if admit > 0 and mode == 'refund' then
    tat = math.max(tat - admit * t, now)
    moved = true
  end
  local start = math.max(tat, now)
  local avail = math.floor((now + tau + t - start) / t) - reserved - holding
  local outcome = 1
  local retry = 0
  if admit > 0 and not moved then
    if mode == 'owe' or avail >= admit then
      tat = start + admit * t
      avail = avail - admit
    else
      outcome = 0
      retry = math.max(start - tau + (reserved + holding + admit - 1) * t - now, 1)
    end
  end
  local claim = holding
  local ahead = math.max(tat - now, 0)
  local record = nil
  if me ~= '' then
    if avail > 0 then
      -- A fair share of what is left; while more than half the burst is
      -- left, at least half of it, however little the replica used lately.
      local fair = math.floor(avail / (others + 1))
      if 2 * avail >= (tau / t + 1) then
        want = math.max(want, math.floor(fair / 2))
      end
      claim = holding + math.min(want, fair)
    end
    record = entry .. ' ' .. string.format('%.0f', applied) .. ' ' .. claim .. ' '
      .. string.format('%.0f', now_ms + life)
  end
  if (tat > now or moved) and record then
    redis.call('HSET', key, 't', string.format('%.0f', tat), me, record)
  elseif tat > now or moved then
    redis.call('HSET', key, 't', string.format('%.0f', tat))
  elseif record then
    redis.call('HSET', key, me, record)
  end
  local ttl = math.max(math.ceil(ahead / 1000), keep)
  -- A key that had no fields has no TTL to keep: no need to read it.
  if ttl > 0 and (#fields == 0 or redis.call('PTTL', key) < ttl) then
    redis.call('PEXPIRE', key, ttl)
  end
  return outcome, math.max(avail, 0), ahead, retry, claim
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
"
    };
}

/// One key. ARGV:
/// 1. T, the emission interval (µs)
/// 2. tau = T × (burst − 1) (µs)
/// 3. deadline (server µs; 0: none)
/// 4. admit: the units to decide now (`1` for one request), `0` to only
///    sync
/// 5. replica id (empty: an exact-mode store, which keeps no field)
/// 6. entry id, 7. applied as far as the replica knows, 8. its running total
/// 9. cap: the most admissions one call charges (a longer backlog, after an
///    outage, is forgiven)
/// 10. age: µs since the first admission not yet merged (they are placed
///     when they happened, so a steady stream costs no extra debt)
/// 11. want: the claim asked for, 12. its life (ms)
/// 13. keep (ms): the least time the key's fields are kept
/// 14. mode (optional): `take` (default), `owe` or `refund`; see `share`
///
/// Returns `{outcome, remaining, ahead_us, retry_us, now_us, claim}`:
/// outcome 1 = allowed (or synced), 0 = limited, 2 = late (nothing done);
/// `ahead_us` = TAT − now (0: full).
pub(super) const SHARE: &str = concat!(
    share_fn!(),
    r"
local deadline = tonumber(ARGV[3])
if deadline > 0 and now > deadline then
  return {2, 0, 0, 0, now, 0}
end
local outcome, remaining, ahead, retry, claim = share(KEYS[1], tonumber(ARGV[1]),
  tonumber(ARGV[2]), tonumber(ARGV[4]) or 0, ARGV[5], ARGV[6], tonumber(ARGV[7]),
  tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]),
  tonumber(ARGV[12]), tonumber(ARGV[13]), now, ARGV[14] or 'take')
return {outcome, remaining, ahead, retry, now, claim}
"
);

/// A sync of several keys of one replica in one call (on a cluster, keys of
/// one slot). ARGV: deadline, replica id, claim life (ms), keep (ms), then
/// per key (in `KEYS` order) T, tau, entry, applied, total, cap, age, want.
/// Returns `{now_us, late}` then, per key, `{remaining, ahead_us, claim}`
/// (late = 1: past the deadline, nothing done, no per-key values).
pub(super) const SHARE_MANY: &str = concat!(
    share_fn!(),
    r"
local deadline = tonumber(ARGV[1])
if deadline > 0 and now > deadline then
  return {now, 1}
end
local me = ARGV[2]
local life = tonumber(ARGV[3])
local keep = tonumber(ARGV[4])
local out = {now, 0}
for k = 1, #KEYS do
  local a = 4 + (k - 1) * 8
  local _, remaining, ahead, _, claim = share(KEYS[k], tonumber(ARGV[a + 1]),
    tonumber(ARGV[a + 2]), 0, me, ARGV[a + 3], tonumber(ARGV[a + 4]),
    tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7]),
    tonumber(ARGV[a + 8]), life, keep, now, 'take')
  out[#out + 1] = remaining
  out[#out + 1] = ahead
  out[#out + 1] = claim
end
return out
"
);

/// The replicas of one local-first store: a sorted set of replica ids scored
/// by when each last registered (server ms). ARGV: replica id, window (ms).
/// Returns how many registered within the window.
pub(super) const REGISTER: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('PEXPIRE', KEYS[1], window)
return redis.call('ZCARD', KEYS[1])
";
