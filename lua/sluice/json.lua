-- JSON through lua-cjson, with an instance of our own so that settings made
-- here never change the cjson other code sees.
local cjson = require("cjson").new()
cjson.encode_sparse_array(true)       -- sparse arrays become objects, not errors

local json = { null = cjson.null }

function json.encode(value)
  local ok, s = pcall(cjson.encode, value)
  if not ok then error("cannot encode JSON: " .. tostring(s), 2) end
  return s
end

-- Returns value, or nil and a message: bad input from a client is normal.
function json.decode(text)
  if type(text) ~= "string" then return nil, "JSON text must be a string" end
  local ok, v = pcall(cjson.decode, text)
  if not ok then return nil, tostring(v) end
  return v
end

return json
