-- The admin listener (--admin-listen) as specs reach it: its port from the
-- log line, a GET on it, one sample of its Prometheus text.
local http = require "sluice.testing.http"

local admin = {}

function admin.port(srv)
  assert(srv:wait_log("admin endpoints at 127%.0%.0%.1:%d+"), srv:log())
  return tonumber(srv:log():match("admin endpoints at 127%.0%.0%.1:(%d+)"))
end

function admin.get(port, path, timeout)
  return http.request("127.0.0.1", port, { method = "GET", path = path, timeout = timeout or 5 })
end

-- The value of one sample ("name{labels}" exactly as rendered), or nil.
function admin.sample(text, series)
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, #series + 1) == series .. " " then return tonumber(line:sub(#series + 2)) end
  end
  return nil
end

return admin
