-- Log lines through the core's logger.
local core = require "sluice.core"

local log = {}
for _, level in ipairs { "debug", "info", "warn", "error" } do
  log[level] = function(fmt, ...)
    local msg = select("#", ...) > 0 and fmt:format(...) or tostring(fmt)
    core.log(level, msg)
  end
end

-- A script error: the message (which starts with file:line) at error
-- level, the stack traceback at debug level.
function log.script_error(what, err)
  err = tostring(err)
  local first, rest = err:match("^(.-)\n(stack traceback:.*)$")
  core.log("error", what .. ": " .. (first or err))
  if rest then core.log("debug", rest) end
end

return log
