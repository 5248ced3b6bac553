-- JSON. Decoding through lua-cjson (an instance of our own, so settings
-- here never change the cjson other code sees). Encoding through a small
-- encoder of our own, because Debian's cjson prints numbers with at most
-- 14 significant digits: a microsecond timestamp or an id near 2^53 would
-- come out rounded. Integers below 2^53 are exact; other numbers use the
-- shortest form that reads back the same.
local ffi = require "ffi"
local cjson = require("cjson").new()

local type, tostring, tonumber, pairs = type, tostring, tonumber, pairs
local getmetatable, setmetatable, pcall, error = getmetatable, setmetatable, pcall, error
local gsub, format, char = string.gsub, string.format, string.char
local concat, huge = table.concat, math.huge

local json = { null = cjson.null }

-- Tables with this metatable encode as arrays even when empty.
json.array_mt = { __name = "sluice.json.array" }
function json.empty_array() return setmetatable({}, json.array_mt) end

local ESC = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
              ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
for i = 0, 31 do
  local c = char(i)
  if not ESC[c] then ESC[c] = format("\\u%04x", i) end
end
local STR_SPECIAL = '[%z\1-\31"\\]'
local u8p = ffi.typeof("const uint8_t *")

-- A byte loop rather than string.find: the JIT compiles it.
local function needs_escape(s)
  local p = ffi.cast(u8p, s)
  for i = 0, #s - 1 do
    local c = p[i]
    if c < 32 or c == 34 or c == 92 then return true end
  end
  return false
end

local TWO53 = 2 ^ 53

local function number_text(x, prefix)
  if x ~= x or x == huge or x == -huge then
    error(prefix .. ": cannot encode NaN or infinity as JSON", 0)
  end
  if x % 1 == 0 then
    if x > -1e14 and x < 1e14 then return tostring(x) end   -- exact already
    if x > -TWO53 and x < TWO53 then return format("%d", x) end
  end
  for digits = 14, 17 do
    local s = format("%." .. digits .. "g", x)
    if tonumber(s) == x then return s end
  end
  return format("%.17g", x)
end

-- The JSON text of a number (exact for integers below 2^53).
function json.number_text(x)
  return number_text(x, "sluice.json")
end

-- An encoder: opts.prefix names the caller in error messages;
-- opts.array_mt / opts.native_array_mt mark arrays; opts.raw(v) may return
-- the JSON text for a special value (nil: encode it normally).
function json.encoder(opts)
  local prefix = opts.prefix or "sluice.json"
  local array_mt, native_mt, raw = opts.array_mt or json.array_mt, opts.native_array_mt, opts.raw
  local null = cjson.null

  local function is_array(t)
    local mt = getmetatable(t)
    if mt == array_mt or mt == json.array_mt or (native_mt and mt == native_mt) then return true end
    local n = #t
    if n == 0 then return false end
    local count = 0
    for _ in pairs(t) do count = count + 1 end
    return count == n
  end

  -- Appends the JSON text of v to buf after position n; returns the new n.
  local function encode_value(v, buf, n, depth)
    local t = type(v)
    if t == "string" then
      if needs_escape(v) then v = gsub(v, STR_SPECIAL, ESC) end
      buf[n + 1], buf[n + 2], buf[n + 3] = '"', v, '"'
      return n + 3
    elseif t == "number" then
      buf[n + 1] = number_text(v, prefix)
      return n + 1
    elseif t == "boolean" then
      buf[n + 1] = v and "true" or "false"
      return n + 1
    elseif v == null then
      buf[n + 1] = "null"
      return n + 1
    elseif t ~= "table" then
      error(prefix .. ": cannot encode a " .. t .. " value as JSON", 0)
    end
    if depth > 1000 then error(prefix .. ": cannot encode: nesting deeper than 1000 (a cycle?)", 0) end
    local text = raw and raw(v)
    if text then
      buf[n + 1] = text
      return n + 1
    end
    if is_array(v) then
      local len = #v
      if len == 0 then buf[n + 1] = "[]"; return n + 1 end
      n = n + 1
      buf[n] = "["
      for i = 1, len do
        if i > 1 then n = n + 1; buf[n] = "," end
        n = encode_value(v[i], buf, n, depth + 1)
      end
      n = n + 1
      buf[n] = "]"
      return n
    end
    n = n + 1
    buf[n] = "{"
    local first = true
    for k, x in pairs(v) do
      local kt = type(k)
      if kt == "number" then k = number_text(k, prefix)
      elseif kt ~= "string" then error(prefix .. ": cannot encode a " .. kt .. " key as JSON", 0)
      elseif needs_escape(k) then k = gsub(k, STR_SPECIAL, ESC) end
      if first then
        buf[n + 1], buf[n + 2], buf[n + 3] = '"', k, '":'
        first = false
      else
        buf[n + 1], buf[n + 2], buf[n + 3] = ',"', k, '":'
      end
      n = encode_value(x, buf, n + 3, depth + 1)
    end
    n = n + 1
    buf[n] = "}"
    return n
  end

  return function(v)
    local buf = {}
    local n = encode_value(v, buf, 0, 0)
    return concat(buf, "", 1, n)
  end
end

local encode = json.encoder {}

-- Raises on what JSON cannot hold (functions, NaN, cycles).
function json.encode(value)
  local ok, s = pcall(encode, value)
  if not ok then error(s, 2) end
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
