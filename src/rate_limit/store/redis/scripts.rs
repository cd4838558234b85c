//! The two Lua scripts. Both keep one GCRA "theoretical arrival time" (TAT)
//! per key, in microseconds of the Redis server's own clock (`TIME`), under the
//! same key and with the same meaning, so exact and local-first replicas can
//! share keys. Each touches exactly one key (`KEYS[1]`): no `CROSSSLOT` on a
//! cluster. A key expires when its bucket is full again, so nothing leaks.
//!
//! Both take a deadline on the server's clock (0: none) and do nothing past
//! it: work that arrives after the caller gave up spends no quota.

/// One decision. ARGV: emission interval T, tau = T × (burst − 1), deadline
/// (all µs). Returns {outcome, remaining, reset_after_us, retry_after_us,
/// now_us}; outcome 1 = allowed, 0 = limited, 2 = late (nothing spent).
pub(super) const DECIDE: &str = r"
local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local deadline = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
if deadline > 0 and now > deadline then
  return {2, 0, 0, 0, now}
end
local stored = redis.call('GET', KEYS[1])
local tat = math.max(stored and tonumber(stored) or 0, now)
local earliest = tat - tau
if now < earliest then
  return {0, 0, tat - now, earliest - now, now}
end
local new_tat = tat + t
local full_in = new_tat - now
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(full_in / 1000))
return {1, math.floor((now + tau + t - new_tat) / t), full_in, 0, now}
";

/// One key of a local-first sync: merges n admissions that started `age` µs
/// before now (never before they happened, so a steady stream costs no extra
/// debt) after the shared TAT, and returns how far the TAT is ahead of now.
/// ARGV: T, n, age, deadline (µs). Returns {outcome, ahead_us, now_us};
/// outcome 1 = merged, 2 = late (nothing merged).
pub(super) const MERGE: &str = r"
local t = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local age = tonumber(ARGV[3])
local deadline = tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
if deadline > 0 and now > deadline then
  return {2, 0, now}
end
local stored = redis.call('GET', KEYS[1])
local tat = stored and tonumber(stored) or 0
if n > 0 then
  tat = math.max(tat, now - age) + n * t
  if tat > now then
    redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
  end
end
return {1, math.max(tat - now, 0), now}
";
