-- sluice.rollout: which variant of a route a request gets: an override
-- header (traffic colour set by a gateway or a tester), else a sticky
-- percentage split on a key (user id, ...), else the default.
--
--   rollout.bucket(key, salt) -> integer 0..9999
--     The first 4 bytes of SHA-256(salt .. "\0" .. key), read as a
--     big-endian unsigned 32-bit integer, modulo 10000.  Defined by that
--     formula only (libcrypto's SHA-256, not Lua's string hash), so it is
--     the same in every worker, process, restart, machine and LuaJIT build,
--     and can be recomputed from a shell:
--       printf 'salt\0key' | openssl dgst -sha256   -> take 8 hex digits
--     (the modulo bias of 2^32 mod 10000 is below 3e-6 per bucket).
--     salt defaults to ""; key and salt must be strings (numbers are
--     converted with tostring).
--
--   local r = rollout.new(spec)       -- compile once (checks the spec)
--   r:choose(req) -> variant, reason, bucket
--   rollout.choose(req, spec)         -- same; compiles and caches by spec
--                                     -- table identity (do not mutate a spec
--                                     -- after first use)
--
-- spec:
--   variants  list of known variant names, e.g. {"stable","green","blue"}.
--             The default is always known.  Also fixes the split layout
--             order (see below).  When absent: the default followed by the
--             split's names sorted alphabetically.
--   default   default variant, "stable" when absent.
--   header    header name, or list of header names checked in order, whose
--             value selects a variant directly.  Matched against known
--             variant names after trimming blanks, case-insensitively;
--             unknown values are ignored (fall through to the split).
--             Anyone who can reach the route can set it: strip it at the
--             edge if clients must not pick their variant.
--   key       string (e.g. claims.sub), number, or function(req) returning
--             one; nil or "" falls back to req.remote_addr.  No key at all
--             -> the default variant (reason "default").
--   split     { green = 10, blue = 0.5 }: percentages of keys; resolution
--             0.01% (shares are rounded to the nearest 0.01); sum <= 100.
--   salt      string mixed into the hash; default "".  Routes with the same
--             salt put a given key in the same buckets; give each
--             independent experiment its own salt.
--
-- reason: "header" | "split" | "default".   bucket: the key's bucket, or
-- nil when none was computed (header override, no key, empty split).
--
-- Split layout and the ramp-up guarantee.  The 10000 buckets are assigned
-- from both ends; the default owns whatever is left in the middle:
--   1st, 3rd, 5th ... split variant (in spec.variants order) are stacked
--   upward from bucket 0:         [0, s1) [s1, s1+s3) ...
--   2nd, 4th, 6th ... are stacked downward from 10000:
--                                 [10000-s2, 10000) [10000-s2-s4, 10000-s2) ...
-- Guarantee: changing the share of a variant that is the last one stacked
-- on its end (the one next to the default's middle region) moves keys only
-- between that variant and the default: when its share grows (10 -> 50 ->
-- 100%) every key already in it stays and every key that changes goes INTO
-- it; nobody else's membership changes.  With one or two split variants
-- that holds for every variant.  With three or more, changing an inner
-- variant's share shifts the variants stacked after it on the same end
-- (their share is kept, their members change): ramp the outer ones, or
-- order spec.variants so the variant being ramped comes last on its end.
-- (No stateless layout can give the guarantee to every variant once there
-- are three or more of them.)

local crypto = require "sluice.crypto"
local text = require "sluice.text"

local sha256_u32 = crypto.sha256_u32
local type, tostring, ipairs, pairs = type, tostring, ipairs, pairs
local lower, trim = string.lower, text.trim

local M = {}
local Rollout = {}
Rollout.__index = Rollout

local BUCKETS = 10000

local function bucket(key, salt)
  return sha256_u32(salt .. "\0" .. key) % BUCKETS
end

function M.bucket(key, salt)
  if type(key) == "number" then key = tostring(key) end
  if type(key) ~= "string" then error("sluice.rollout.bucket: key must be a string", 2) end
  salt = salt or ""
  if type(salt) ~= "string" then error("sluice.rollout.bucket: salt must be a string", 2) end
  return bucket(key, salt)
end

local function cfg_error(msg) error("sluice.rollout: " .. msg, 3) end

function M.new(spec)
  if type(spec) ~= "table" then cfg_error("rollout.new(spec): spec table required") end
  local self = setmetatable({}, Rollout)

  local default = spec.default or "stable"
  if type(default) ~= "string" or default == "" then cfg_error("spec.default must be a non-empty string") end
  self.default = default

  local split = spec.split or {}
  if type(split) ~= "table" then cfg_error("spec.split must be a table { variant = percent }") end

  -- known variants, in layout order
  local order = {}
  if spec.variants ~= nil then
    if type(spec.variants) ~= "table" then cfg_error("spec.variants must be a list of names") end
    for _, v in ipairs(spec.variants) do
      if type(v) ~= "string" or v == "" then cfg_error("spec.variants entries must be non-empty strings") end
      order[#order + 1] = v
    end
  else
    order[1] = default
    local names = {}
    for name in pairs(split) do
      if type(name) ~= "string" then cfg_error("spec.split keys must be variant names") end
      names[#names + 1] = name
    end
    table.sort(names)
    for _, n in ipairs(names) do order[#order + 1] = n end
  end
  local known, lookup = {}, {}
  for _, v in ipairs(order) do
    local l = lower(v)
    if lookup[l] and lookup[l] ~= v then cfg_error("variants '" .. lookup[l] .. "' and '" .. v .. "' differ only in case") end
    known[v], lookup[l] = true, v
  end
  if not known[default] then known[default], lookup[lower(default)] = true, default end
  self.lookup = lookup

  -- shares
  local total = 0
  for name, pct in pairs(split) do
    if not known[name] then cfg_error("split variant '" .. tostring(name) .. "' is not in spec.variants") end
    if name == default then cfg_error("the default variant '" .. name .. "' cannot have a split share") end
    if type(pct) ~= "number" or pct ~= pct or pct < 0 or pct > 100 then
      cfg_error("split share of '" .. name .. "' must be a number between 0 and 100")
    end
    total = total + math.floor(pct * 100 + 0.5)
  end
  if total > BUCKETS then cfg_error("split shares add up to more than 100%") end
  self.total = total

  -- layout: alternate ends, in `order`
  local up, down = {}, {}
  local lo, hi, n = 0, BUCKETS, 0
  for _, name in ipairs(order) do
    local pct = split[name]
    if pct then
      local width = math.floor(pct * 100 + 0.5)
      n = n + 1
      if n % 2 == 1 then
        lo = lo + width
        up[#up + 1] = { name = name, limit = lo } -- bucket < limit
      else
        hi = hi - width
        down[#down + 1] = { name = name, limit = hi } -- bucket >= limit
      end
    end
  end
  self.up, self.down, self.lo, self.hi = up, down, lo, hi

  -- header names
  local h = spec.header
  if type(h) == "string" then h = { h } end
  if h ~= nil and type(h) ~= "table" then cfg_error("spec.header must be a header name or a list of them") end
  self.headers = {}
  for _, name in ipairs(h or {}) do
    if type(name) ~= "string" or name == "" then cfg_error("spec.header entries must be non-empty strings") end
    self.headers[#self.headers + 1] = lower(name)
  end

  local key = spec.key
  local kt = type(key)
  if key ~= nil and kt ~= "string" and kt ~= "number" and kt ~= "function" then
    cfg_error("spec.key must be a string, a number or a function(req)")
  end
  self.key = key

  local salt = spec.salt or ""
  if type(salt) ~= "string" then cfg_error("spec.salt must be a string") end
  self.salt = salt
  return self
end

-- Which variant owns bucket b.
function Rollout:variant_of(b)
  if b < self.lo then
    local up = self.up
    for i = 1, #up do
      if b < up[i].limit then return up[i].name end
    end
  elseif b >= self.hi then
    local down = self.down
    for i = 1, #down do
      if b >= down[i].limit then return down[i].name end
    end
  end
  return nil
end

function Rollout:choose(req)
  local headers = self.headers
  if #headers > 0 then
    local hs = req.headers
    if hs then
      for i = 1, #headers do
        local v = hs[headers[i]]
        if type(v) == "string" then
          -- byte scans, not "^%s*(.-)%s*$": that pattern is quadratic
          -- on a long run of blanks, and anyone can send this header
          local name = self.lookup[lower(trim(v))]
          if name then return name, "header" end
        end
      end
    end
  end

  if self.total == 0 then return self.default, "default" end

  local key = self.key
  if type(key) == "function" then key = key(req) end
  if type(key) == "number" then key = tostring(key) end
  if type(key) ~= "string" or key == "" then
    key = req.remote_addr
    if type(key) ~= "string" or key == "" then return self.default, "default" end
  end

  local b = bucket(key, self.salt)
  local v = self:variant_of(b)
  if v then return v, "split", b end
  return self.default, "default", b
end

local CACHE = setmetatable({}, { __mode = "k" })

function M.choose(req, spec)
  local r = CACHE[spec]
  if not r then
    r = M.new(spec)
    CACHE[spec] = r
  end
  return r:choose(req)
end

return M
