-- sluice.mask: declarative masking of JSON payloads, per subscriber view.
--
--   local m = mask.compile {
--     rules = {
--       { "user.phone",  "phone" },
--       { "items.*.card", "redact" },
--       { "email",       "email" },
--       { "ssn",         "national_id" },
--       { "token",       "drop" },
--       { "user.id",     { "hash", salt = "s", len = 16 } },
--       { "note",        function(v, path) return v:upper() end },
--     },
--     on_invalid = "redact",   -- "raw" | "drop" | "redact" (default)
--   }
--   m:apply(json_string) -> new_json | nil, ops, err
--   m.key                -> stable identifier of the rule set (see below)
--   mask.key(spec)       -> the same key without keeping the masker
--   mask.compile(rules)  -- a bare rules list/map is accepted too;
--                        -- { ["user.phone"] = "phone", ... } is applied in
--                        -- sorted path order
--
-- apply() decodes the payload, runs the rules in order, and re-encodes.
--   * returns the new payload (nil = drop the event), the number of fields
--     masked (ops), and err = "invalid_json" when the payload was not a JSON
--     object or array.
--   * ops == 0 (no rule matched anything) returns the input string itself,
--     byte for byte.
--   * a payload that is not a JSON object/array (bad JSON, a bare scalar, an
--     empty string) follows on_invalid: "raw" passes it unchanged (ops 0),
--     "drop" returns nil (ops 1), "redact" returns the JSON string
--     "[redacted]" i.e. `"[redacted]"` with quotes (ops 1).  Default
--     "redact": a masked view never leaks a payload it could not inspect.
--
-- Paths: dot-separated keys.  "*" matches every member of an object or
-- every element of an array.  A segment of digits is an array index,
-- 0-BASED like JSON/JavaScript/jq ("items.0.card" is the first item); on an
-- object it matches the key of that name ("0").  "\." escapes a dot inside
-- a key.  Missing fields and type mismatches are ignored.
--
-- Built-in maskers (strings; numbers and booleans are masked as their text;
-- objects/arrays given to phone/email/national_id/hash become "[redacted]";
-- JSON null is left alone by every built-in except drop):
--   phone        keeps the first 3 and last 4 DIGITS, every other digit
--                becomes "*", non-digits (+, spaces, dashes, parens) are
--                kept: "+86 138-1234-5678" -> "+86 1**-****-5678".  With
--                fewer than 8 digits every digit is masked.  A digit is any
--                Unicode decimal digit (category Nd: ASCII, fullwidth
--                "１３８", Arabic-Indic "٠١٢", extended Arabic-Indic,
--                Devanagari, Bengali, Thai, ...; see ND_ZEROS); each masked
--                digit becomes one "*" whatever its length in bytes.
--   email        first character of the local part, "***", "@", the whole
--                domain: "john.doe@example.com" -> "j***@example.com".
--                Not an address -> "[redacted]".
--   national_id  over letters and digits (other characters kept): keeps the
--                first 6 and last 4 when at least 14 of them (18-character
--                ID cards: "110105********002X"); keeps only the last 4 when
--                8 to 13 (an SSN "123-45-6789" -> "***-**-6789": first 6 +
--                last 4 would reveal it all); masks all when fewer.
--                Digits as for phone; letters are ASCII and fullwidth Latin.
-- They fail closed: a value they cannot read (text that is not valid
-- UTF-8, an object or array) becomes "[redacted]" whole, never passes.
--   redact       the string "[redacted]" (mask.REDACTED).
--   hash         lowercase hex HMAC-SHA256(salt, text) through libcrypto;
--                { "hash", salt = "...", len = n } keeps the first n hex
--                digits (default 64).  salt is required: an unsalted hash
--                of a phone number is reversed by brute force in seconds.
--   drop         removes the field; removing an array element shifts the
--                following elements down.
-- Custom maskers: function(value, path) -> new value; nil removes the field
-- like drop.  path is the concrete path ("items.0.card").  value is the
-- decoded Lua value (JSON null is mask.null; empty arrays are tables with
-- the mask.array_mt metatable).  A custom masker that raises makes apply()
-- raise "sluice.mask: custom masker for 'rule' failed at 'path': <error>";
-- the server isolates that error (the event is not delivered to the view).
--
-- Rule-set key: m.key is "mask:" followed by 32 hex digits of SHA-256 over
-- a canonical description of (on_invalid, rules in order).  Subscribers
-- whose rule sets have the same key share one view, so each event is
-- masked and encoded once per view.  Hash salts enter the key only through
-- their digest.  A custom function is identified by the function value
-- itself: the same function object gives the same key, within one Lua
-- state only.  compile() returns the same masker object for the same key,
-- and caches by spec table identity: do not mutate a spec after using it.
--
-- JSON notes (Debian's lua-cjson 2.1.0 is the baseline):
--   * cjson decodes [] and {} to the same empty table and has no
--     empty-array marker (no encode_empty_table_as_object /
--     decode_array_with_array_mt in this build).  Empty arrays are kept as
--     arrays: before decoding, "[]" outside strings is rewritten to a
--     one-element array holding a per-process random sentinel that the
--     encoder turns back into "[]".  With OpenResty's cjson the native
--     array metatable is used instead.
--   * cjson.encode prints numbers with at most 14 significant digits
--     (1712345678901234 -> 1.7123456789012e+15), which would corrupt ids
--     and microsecond timestamps in the fields NOT being masked.  Payloads
--     are therefore re-encoded by a small encoder here: integers up to 2^53
--     exactly, other numbers with the shortest of %.14g..%.17g that reads
--     back identically.
--   * object key order is not preserved (Lua tables have none); "\/" is
--     not escaped; NaN/Infinity are not JSON and are refused on decode.
--   * a dedicated cjson.safe instance is used: global cjson settings of
--     other code are neither read nor changed.

local ffi = require "ffi"
local crypto = require "sluice.crypto"
local json = require "sluice.json"
local cjson = require("cjson.safe").new()

local type, tostring, tonumber, pairs, ipairs = type, tostring, tonumber, pairs, ipairs
local getmetatable, setmetatable, pcall = getmetatable, setmetatable, pcall
local find, match, gsub, sub, byte, format =
  string.find, string.match, string.gsub, string.sub, string.byte, string.format
local concat, sort, tremove = table.concat, table.sort, table.remove

cjson.decode_invalid_numbers(false)
pcall(cjson.decode_max_depth, 1000)

local M = {}

local NULL = cjson.null
local REDACTED = "[redacted]"
M.null = NULL
M.REDACTED = REDACTED

-- Arrays that are empty, or built by custom maskers, carry this metatable.
local ARRAY_MT = { __name = "sluice.mask.array" }
M.array_mt = ARRAY_MT
function M.empty_array() return setmetatable({}, ARRAY_MT) end

-- OpenResty's cjson can mark decoded arrays itself.
local NATIVE_ARRAY_MT
if cjson.decode_array_with_array_mt and cjson.array_mt then
  cjson.decode_array_with_array_mt(true)
  NATIVE_ARRAY_MT = cjson.array_mt
end

---------------------------------------------------------------------------
-- Empty-array sentinel (Debian cjson)

local SENTINEL = "\0sluice.mask.empty-array." .. crypto.hex(crypto.random_bytes(8))
local SENTINEL_JSON = '"\\u0000' .. sub(SENTINEL, 2) .. '"'

local function is_sentinel_array(t)
  return t[1] == SENTINEL and t[2] == nil
end

-- Rewrites "[ ]" outside strings to "[SENTINEL]".  Only called when the
-- payload contains something that looks like an empty array.
local function mark_empty_arrays(s)
  local out, last, i = {}, 1, 1
  while true do
    local p = find(s, '["%[]', i)
    if not p then break end
    if byte(s, p) == 34 then -- '"': skip the string
      local j = p + 1
      while true do
        local q = find(s, '["\\]', j)
        if not q then return s end -- unterminated: decode will refuse it
        if byte(s, q) == 92 then j = q + 2 else i = q + 1; break end
      end
    else
      local close = match(s, "^%[[ \t\r\n]*()%]", p)
      if close then
        out[#out + 1] = sub(s, last, p)
        out[#out + 1] = SENTINEL_JSON
        last = close
        i = close + 1
      else
        i = p + 1
      end
    end
  end
  if last == 1 then return s end
  out[#out + 1] = sub(s, last)
  return concat(out)
end

-- Cheap pre-check (a JIT-compiled byte loop; an unanchored Lua pattern
-- costs more than decoding): is there a '[' followed by blanks and ']'?
-- Also true for "[]" inside strings; mark_empty_arrays sorts that out.
local function may_have_empty_array(s)
  local p = ffi.cast("const uint8_t *", s)
  local n = #s
  local i = 0
  while i < n do
    if p[i] == 91 then
      local j = i + 1
      while j < n and (p[j] == 32 or p[j] == 9 or p[j] == 10 or p[j] == 13) do j = j + 1 end
      if j < n and p[j] == 93 then return true end
      i = j
    else
      i = i + 1
    end
  end
  return false
end

-- Replace sentinel arrays inside a value by ARRAY_MT tables, so that a
-- custom masker sees ordinary (empty) tables.
local function clean(v, depth)
  if depth > 1000 then return v end
  if is_sentinel_array(v) then return setmetatable({}, ARRAY_MT) end
  for k, x in pairs(v) do
    if type(x) == "table" then v[k] = clean(x, depth + 1) end
  end
  return v
end

---------------------------------------------------------------------------
-- Encoder: sluice.json's exact encoder (cjson rounds numbers to 14 digits),
-- told about the empty-array sentinel and this module's array marker.

local encode = json.encoder {
  prefix = "sluice.mask",
  array_mt = ARRAY_MT,
  native_array_mt = NATIVE_ARRAY_MT,
  raw = function(v) if is_sentinel_array(v) then return "[]" end end,
}
M._encode = encode -- exposed for specs

---------------------------------------------------------------------------
-- Built-in maskers: function(value, opts) -> new value (nil removes)

local function text_of(v)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then return json.number_text(v) end
  if t == "boolean" then return tostring(v) end
  return nil
end

-- Scratch buffer for the digit/alnum maskers (one Lua state per worker).
local scratch, scratch_size = nil, 0

-- Copies s to the scratch buffer; returns the buffer.
local function scratch_copy(s)
  local n = #s
  if n > scratch_size then
    scratch_size = math.max(n, 256)
    scratch = ffi.new("uint8_t[?]", scratch_size)
  end
  ffi.copy(scratch, s, n)
  return scratch
end

-- ASCII classes, byte by byte (the fast path: most values are ASCII).
local function is_digit(c) return c >= 48 and c <= 57 end
local function is_alnum(c) return (c >= 48 and c <= 57) or (c >= 65 and c <= 90) or (c >= 97 and c <= 122) end

-- What counts as a digit: every Unicode decimal digit (general category
-- Nd, Unicode 15.0). Each Nd script has its ten digits on consecutive code
-- points; this is the zero of each: ASCII, Arabic-Indic, extended
-- Arabic-Indic, NKo, Devanagari, Bengali, Gurmukhi, Gujarati, Oriya,
-- Tamil, Telugu, Kannada, Malayalam, Sinhala, Thai, Lao, Tibetan, Myanmar,
-- Khmer, Mongolian, Limbu, New Tai Lue, Tai Tham, Balinese, Sundanese,
-- Lepcha, Ol Chiki, Vai, Saurashtra, Kayah Li, Javanese, Cham, Meetei
-- Mayek, fullwidth, and the historic and mathematical ones above U+FFFF.
local ND_ZEROS = {
  0x0030, 0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6,
  0x0C66, 0x0CE6, 0x0D66, 0x0DE6, 0x0E50, 0x0ED0, 0x0F20, 0x1040, 0x1090, 0x17E0,
  0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620,
  0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10, 0x104A0, 0x10D30, 0x11066,
  0x110F0, 0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0, 0x11650, 0x116C0, 0x11730, 0x118E0,
  0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x11F50, 0x16A60, 0x16AC0, 0x16B50, 0x1D7CE, 0x1D7D8,
  0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E4F0, 0x1E950, 0x1FBF0,
}
M.digit_zeros = ND_ZEROS
local DIGIT = {}
for _, z in ipairs(ND_ZEROS) do
  for d = 0, 9 do DIGIT[z + d] = true end
end

local function is_digit_cp(cp) return DIGIT[cp] == true end
-- national_id: digits as above, ASCII letters and fullwidth Latin letters.
local function is_alnum_cp(cp)
  return DIGIT[cp] == true or (cp >= 65 and cp <= 90) or (cp >= 97 and cp <= 122)
      or (cp >= 0xFF21 and cp <= 0xFF3A) or (cp >= 0xFF41 and cp <= 0xFF5A)
end

-- Walks s as UTF-8. With a class: returns starts (byte offset of each
-- character, plus #s + 1 after the last), sel (class(code point) of each),
-- the number of characters and how many of them class selects. Without:
-- returns true. nil when s is not UTF-8 (RFC 3629: no overlong forms, no
-- surrogates, nothing above U+10FFFF, no stray or missing continuation
-- bytes): a masker that cannot tell the characters apart cannot mask them.
local function utf8_scan(s, class)
  local n, i, k, total = #s, 1, 0, 0
  local starts, sel = class and {} or nil, class and {} or nil
  while i <= n do
    local c, cp, len = byte(s, i), nil, nil
    if c < 0x80 then
      cp, len = c, 1
    elseif c >= 0xC2 and c <= 0xDF then
      local c2 = byte(s, i + 1)
      if not c2 or c2 < 0x80 or c2 > 0xBF then return nil end
      cp, len = (c - 0xC0) * 64 + (c2 - 0x80), 2
    elseif c >= 0xE0 and c <= 0xEF then
      local c2, c3 = byte(s, i + 1, i + 2)
      if not c3 or c2 < 0x80 or c2 > 0xBF or c3 < 0x80 or c3 > 0xBF then return nil end
      cp, len = (c - 0xE0) * 4096 + (c2 - 0x80) * 64 + (c3 - 0x80), 3
      if cp < 0x800 or (cp >= 0xD800 and cp <= 0xDFFF) then return nil end
    elseif c >= 0xF0 and c <= 0xF4 then
      local c2, c3, c4 = byte(s, i + 1, i + 3)
      if not c4 or c2 < 0x80 or c2 > 0xBF or c3 < 0x80 or c3 > 0xBF or c4 < 0x80 or c4 > 0xBF then
        return nil
      end
      cp, len = (c - 0xF0) * 262144 + (c2 - 0x80) * 4096 + (c3 - 0x80) * 64 + (c4 - 0x80), 4
      if cp < 0x10000 or cp > 0x10FFFF then return nil end
    else
      return nil
    end
    if class then
      k = k + 1
      starts[k] = i
      local yes = class(cp)
      sel[k] = yes
      if yes then total = total + 1 end
    end
    i = i + len
  end
  if not class then return true end
  starts[k + 1] = n + 1
  return starts, sel, k, total
end

local function has_non_ascii(s) return find(s, "[\128-\255]") ~= nil end

-- Replaces by '*' the ASCII characters of s selected by `class` (is_digit
-- or is_alnum), except the first `head` and the last `tail` of them.
local function mask_class(s, class, head, tail)
  local len = #s
  local buf = scratch_copy(s)
  local total = 0
  for i = 0, len - 1 do
    if class(buf[i]) then total = total + 1 end
  end
  local k = 0
  for i = 0, len - 1 do
    if class(buf[i]) then
      k = k + 1
      if k > head and k <= total - tail then buf[i] = 42 end
    end
  end
  return ffi.string(buf, len), total
end

local function count_class(s, class)
  local n = 0
  for i = 1, #s do
    if class(byte(s, i)) then n = n + 1 end
  end
  return n
end

-- Masks the characters of s that the class selects (byte_class for ASCII
-- text, cp_class for code points), keeping the first and last few:
-- keep(total) -> head, tail. Each masked character, whatever its length in
-- bytes, becomes one '*'. Text that is not UTF-8 is redacted whole.
local function mask_chars(s, byte_class, cp_class, keep)
  if not has_non_ascii(s) then
    return (mask_class(s, byte_class, keep(count_class(s, byte_class))))
  end
  local starts, sel, count, total = utf8_scan(s, cp_class)
  if not starts then return REDACTED end
  local head, tail = keep(total)
  local out, n, k, from = {}, 0, 0, 1
  for idx = 1, count do
    if sel[idx] then
      k = k + 1
      if k > head and k <= total - tail then
        out[n + 1], out[n + 2] = sub(s, from, starts[idx] - 1), "*"
        n = n + 2
        from = starts[idx + 1]
      end
    end
  end
  out[n + 1] = sub(s, from)
  return concat(out, "", 1, n + 1)
end

local function phone_keep(total)
  if total >= 8 then return 3, 4 end
  return 0, 0
end

local function phone(v)
  local s = text_of(v)
  if not s then return REDACTED end
  return mask_chars(s, is_digit, is_digit_cp, phone_keep)
end

local function email(v)
  local s = text_of(v)
  if not s then return REDACTED end
  if has_non_ascii(s) and not utf8_scan(s) then return REDACTED end
  local localpart, domain = match(s, "^(.+)@([^@]+)$")
  if not localpart then return REDACTED end
  local first = match(localpart, "^[%z\1-\127\194-\244][\128-\191]*")
  if not first then return REDACTED end
  return first .. "***@" .. domain
end

local function national_id_keep(total)
  if total >= 14 then return 6, 4 end
  if total >= 8 then return 0, 4 end
  return 0, 0
end

local function national_id(v)
  local s = text_of(v)
  if not s then return REDACTED end
  return mask_chars(s, is_alnum, is_alnum_cp, national_id_keep)
end

local function redact() return REDACTED end

local function drop() return nil end

local function make_hash(opts)
  local salt, len = opts.salt, opts.len or 64
  if type(salt) ~= "string" or salt == "" then
    error("sluice.mask: the hash masker needs a non-empty salt: { \"hash\", salt = \"...\" }", 0)
  end
  if type(len) ~= "number" or len < 1 or len > 64 or len % 1 ~= 0 then
    error("sluice.mask: hash len must be an integer between 1 and 64", 0)
  end
  local f = function(v)
    local s = text_of(v)
    if not s then return REDACTED end
    local h = crypto.hex(crypto.hmac("sha256", salt, s))
    return len < 64 and sub(h, 1, len) or h
  end
  return f, "hash(" .. crypto.hex(crypto.sha256(salt)) .. "," .. len .. ")"
end

local BUILTIN = { phone = phone, email = email, national_id = national_id, redact = redact, drop = drop }

---------------------------------------------------------------------------
-- Compiling rules

local WILD = {} -- path segment "*"

local function parse_path(path)
  if type(path) ~= "string" or path == "" then
    error("sluice.mask: a rule path must be a non-empty string", 0)
  end
  local segs, cur, i, n = {}, {}, 1, #path
  while i <= n do
    local c = sub(path, i, i)
    if c == "\\" and i < n then
      cur[#cur + 1] = sub(path, i + 1, i + 1)
      i = i + 2
    else
      if c == "." then
        segs[#segs + 1] = concat(cur)
        cur = {}
      else
        cur[#cur + 1] = c
      end
      i = i + 1
    end
  end
  segs[#segs + 1] = concat(cur)
  for k, s in ipairs(segs) do
    if s == "" then error("sluice.mask: empty segment in path '" .. path .. "'", 0) end
    if s == "*" then segs[k] = WILD
    elseif find(s, "^%d+$") and #s < 10 then segs[k] = { index = tonumber(s), key = s }
    end
  end
  return segs
end

local function function_id(f)
  return "fn:" .. (match(tostring(f), "0x%x+") or tostring(f))
end

-- -> fn, is_custom, id
local function compile_masker(m, path)
  local t = type(m)
  if t == "string" then
    if m == "hash" then error("sluice.mask: rule '" .. path .. "': hash needs a salt: { \"hash\", salt = \"...\" }", 0) end
    local f = BUILTIN[m]
    if not f then
      error("sluice.mask: rule '" .. path .. "': unknown masker '" .. m
            .. "' (phone, email, national_id, redact, hash, drop, or a function)", 0)
    end
    return f, false, m
  elseif t == "function" then
    return m, true, function_id(m)
  elseif t == "table" then
    local name = m[1] or m.name
    if name == "hash" then
      local f, id = make_hash(m)
      return f, false, id
    end
    return compile_masker(name, path)
  end
  error("sluice.mask: rule '" .. path .. "': masker must be a name, a table or a function", 0)
end

local function normalise_rules(rules)
  if type(rules) ~= "table" then error("sluice.mask: rules must be a list of {path, masker} or a map", 0) end
  local list = {}
  if rules[1] ~= nil then
    for i, r in ipairs(rules) do
      if type(r) ~= "table" or r[1] == nil or r[2] == nil then
        error("sluice.mask: rule " .. i .. " must be { path, masker }", 0)
      end
      list[#list + 1] = { r[1], r[2] }
    end
  else
    local paths = {}
    for p in pairs(rules) do
      if type(p) ~= "string" then error("sluice.mask: rules map keys must be paths", 0) end
      paths[#paths + 1] = p
    end
    sort(paths)
    for _, p in ipairs(paths) do list[#list + 1] = { p, rules[p] } end
  end
  if #list == 0 then error("sluice.mask: no rules", 0) end
  return list
end

local ON_INVALID = { raw = true, drop = true, redact = true }

local Masker = {}
Masker.__index = Masker

local BY_KEY, by_key_n, BY_KEY_MAX = {}, 0, 256
local BY_SPEC = setmetatable({}, { __mode = "k" })

local function build(spec)
  if type(spec) ~= "table" then error("sluice.mask.compile(spec): spec table required", 0) end
  local rules, on_invalid = spec, "redact"
  if type(spec.rules) == "table" then -- options form (a map rule for a field
                                      -- named "rules" has a masker, not a table)
    rules = spec.rules
    on_invalid = spec.on_invalid or "redact"
  end
  if not ON_INVALID[on_invalid] then
    error("sluice.mask: on_invalid must be \"raw\", \"drop\" or \"redact\", got '" .. tostring(on_invalid) .. "'", 0)
  end
  local compiled, ids = {}, { "on_invalid=" .. on_invalid }
  for i, r in ipairs(normalise_rules(rules)) do
    local path, m = r[1], r[2]
    local segs = parse_path(path)
    local fn, custom, id = compile_masker(m, path)
    compiled[i] = { path = path, segs = segs, nseg = #segs, fn = fn, custom = custom, drop = (fn == drop) }
    ids[#ids + 1] = format("%d:%s=%s", #path, path, id)
  end
  local canonical = concat(ids, "\n")
  local key = "mask:" .. sub(crypto.hex(crypto.sha256(canonical)), 1, 32)
  return setmetatable({ rules = compiled, on_invalid = on_invalid, key = key }, Masker)
end

function M.compile(spec)
  local m = BY_SPEC[spec]
  if m then return m end
  m = build(spec)
  local existing = BY_KEY[m.key]
  if existing then
    m = existing
  else
    if by_key_n >= BY_KEY_MAX then BY_KEY, by_key_n = {}, 0 end
    BY_KEY[m.key] = m
    by_key_n = by_key_n + 1
  end
  if type(spec) == "table" then BY_SPEC[spec] = m end
  return m
end

function M.key(spec)
  return M.compile(spec).key
end

---------------------------------------------------------------------------
-- Applying

local function path_string(stack, depth)
  local parts = {}
  for i = 1, depth do parts[i] = tostring(stack[i]) end
  return concat(parts, ".")
end

-- Masks node[k] (value v) with rule; returns the new value, or nil to remove.
local function mask_value(rule, v, stack, depth)
  if rule.custom then
    if type(v) == "table" then v = clean(v, 0) end
    local ok, res = pcall(rule.fn, v, path_string(stack, depth))
    if not ok then
      error(format("sluice.mask: custom masker for '%s' failed at '%s': %s",
                   rule.path, path_string(stack, depth), tostring(res)), 0)
    end
    return res
  end
  if rule.drop then return nil end
  if type(v) == "table" then return REDACTED end
  return rule.fn(v)
end

-- Walks `node` for segment i of the rule.  Returns the number of ops.
local walk

local function visit(rule, node, k, v, i, stack, depth)
  -- node[k] == v; stack[depth] names k
  if i == rule.nseg then
    if v == NULL and not rule.custom and not rule.drop then return 0, false end
    local nv = mask_value(rule, v, stack, depth)
    if nv == nil then return 1, true end
    node[k] = nv
    return 1, false
  end
  if type(v) == "table" then return walk(rule, v, i + 1, stack, depth), false end
  return 0, false
end

function walk(rule, node, i, stack, depth)
  if is_sentinel_array(node) then return 0 end
  local seg = rule.segs[i]
  local n = #node
  local ops = 0
  if seg == WILD then
    if n > 0 then -- array
      local removed
      for idx = 1, n do
        stack[depth + 1] = idx - 1
        local o, rm = visit(rule, node, idx, node[idx], i, stack, depth + 1)
        ops = ops + o
        if rm then removed = removed or {}; removed[#removed + 1] = idx end
      end
      if removed then
        for r = #removed, 1, -1 do tremove(node, removed[r]) end
      end
    else
      for k, v in pairs(node) do
        stack[depth + 1] = k
        local o, rm = visit(rule, node, k, v, i, stack, depth + 1)
        ops = ops + o
        if rm then node[k] = nil end
      end
    end
    return ops
  end
  local k, v, arr
  if type(seg) == "table" then
    if n > 0 then
      k, arr = seg.index + 1, true
      v = node[k]
      stack[depth + 1] = seg.index
    else
      k = seg.key
      v = node[k]
      stack[depth + 1] = k
    end
  else
    if n > 0 then return 0 end -- a name on an array
    k = seg
    v = node[k]
    stack[depth + 1] = k
  end
  if v == nil then return 0 end
  local o, rm = visit(rule, node, k, v, i, stack, depth + 1)
  if rm then
    if arr then tremove(node, k) else node[k] = nil end
  end
  return o
end

local INVALID_REDACTED = '"' .. REDACTED .. '"'

function Masker:_invalid(payload)
  local p = self.on_invalid
  if p == "raw" then return payload, 0, "invalid_json" end
  if p == "drop" then return nil, 1, "invalid_json" end
  return INVALID_REDACTED, 1, "invalid_json"
end

function Masker:apply(payload)
  if type(payload) ~= "string" then
    error("sluice.mask: apply(payload) expects a JSON string, got " .. type(payload), 2)
  end
  if not find(payload, "^[ \t\r\n]*[%[{]") then return self:_invalid(payload) end
  local src = payload
  if not NATIVE_ARRAY_MT and may_have_empty_array(src) then src = mark_empty_arrays(src) end
  local doc = cjson.decode(src)
  if type(doc) ~= "table" then return self:_invalid(payload) end
  local ops, stack = 0, {}
  local rules = self.rules
  for r = 1, #rules do
    ops = ops + walk(rules[r], doc, 1, stack, 0)
  end
  if ops == 0 then return payload, 0 end
  return encode(doc), ops
end

return M
