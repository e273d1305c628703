-- wrk script of scripts/bench: the AudioConf booking request as the form posts it (validation,
-- insert, the mail queued in the outbox). Every request is another agent: another email address
-- and another client address (`X-Real-IP`, as the reverse proxy in front of the portal sets it),
-- so the daily limits (the portal's defaults) never answer instead of the booking.
-- BENCH_COOKIE and BENCH_CSRF come from one GET of the form; BENCH_TAG keeps agents apart
-- between runs.
local cookie = os.getenv("BENCH_COOKIE")
local csrf = os.getenv("BENCH_CSRF")
local tag = os.getenv("BENCH_TAG") or "0"
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local n = 0
function request()
  n = n + 1
  local body = "csrf_token=" .. csrf .. "&email=agent." .. tag .. "." .. tid .. "." .. n
    .. "%40bench.gouv.fr&when=duration&duration=60"
  local ip = string.format("fd00::%x:%x:%x:%x", tag % 65536, tid, math.floor(n / 65536), n % 65536)
  return wrk.format("POST", "/audioconf", {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Cookie"] = cookie,
    ["X-Real-IP"] = ip,
  }, body)
end
