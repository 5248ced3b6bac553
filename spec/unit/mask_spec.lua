package.path = "./lua/?.lua;./lua/?/init.lua;./spec/helpers/?.lua;" .. package.path
local expect_refused = require "refusals"

local mask = require "sluice.mask"
local cjson = require("cjson.safe").new()

local function decode(s)
  local v, err = cjson.decode(s)
  assert(v ~= nil, "output is not JSON: " .. tostring(s) .. " (" .. tostring(err) .. ")")
  return v
end

local function one(path, masker, payload)
  return mask.compile { rules = { { path, masker } } }:apply(payload)
end

describe("sluice.mask", function()
  describe("built-in maskers", function()
    -- masker, input value (JSON text), expected output value (JSON text)
    local cases = {
      { "phone", '"13812345678"', '"138****5678"' },
      { "phone", '"+86 138-1234-5678"', '"+86 1**-****-5678"' },
      { "phone", '"+1 (415) 555-2671"', '"+1 (41*) ***-2671"' },
      { "phone", '"12345678"', '"123*5678"' },
      { "phone", '"1234567"', '"*******"' },
      { "phone", '"555-1234"', '"***-****"' },
      { "phone", "13812345678", '"138****5678"' },
      { "phone", '{"n":"13812345678"}', '"[redacted]"' },
      { "phone", "null", "null" },
      { "email", '"john.doe@example.com"', '"j***@example.com"' },
      { "email", '"a@b.co"', '"a***@b.co"' },
      { "email", '"\\"x@y\\"@example.com"', '"\\"***@example.com"' },
      { "email", '"\195\169lodie@example.fr"', '"\195\169***@example.fr"' },
      { "email", '"not-an-address"', '"[redacted]"' },
      { "email", '"@example.com"', '"[redacted]"' },
      { "email", "[1,2]", '"[redacted]"' },
      { "national_id", '"11010519491231002X"', '"110105********002X"' },
      { "national_id", '"123-45-6789"', '"***-**-6789"' },
      { "national_id", '"AB1234567"', '"*****4567"' },
      { "national_id", '"1234567"', '"*******"' },
      { "national_id", "123456789", '"*****6789"' },
      -- digits are Unicode decimal digits (Nd), not only ASCII ones
      { "phone", '"１３８１２３４５６７８"', '"１３８****５６７８"' },                 -- fullwidth
      { "phone", '"٠١٢٣٤٥٦٧٨٩"', '"٠١٢***٦٧٨٩"' },                                  -- Arabic-Indic
      { "phone", '"+٩٦٦ ٥٠١٢٣٤٥٦٧"', '"+٩٦٦ *****٤٥٦٧"' },
      { "phone", '"۰۹۱۲ ۳۴۵ ۶۷۸۹"', '"۰۹۱* *** ۶۷۸۹"' },                            -- extended Arabic-Indic
      { "phone", '"+९१ ९८७६५ ४३२१०"', '"+९१ ९**** *३२१०"' },                       -- Devanagari
      { "phone", '"০১৭১২৩৪৫৬৭৮"', '"০১৭****৫৬৭৮"' },                                -- Bengali
      { "phone", '"๐๘๑๒๓๔๕๖๗๘"', '"๐๘๑***๕๖๗๘"' },                                  -- Thai
      { "phone", '"138１２３４5678"', '"138****5678"' },                             -- mixed scripts
      { "phone", '"５５５１２３４"', '"*******"' },                                   -- fewer than 8: all
      { "phone", '"𝟏𝟑𝟖𝟏𝟐𝟑𝟒𝟓"', '"𝟏𝟑𝟖*𝟐𝟑𝟒𝟓"' },                                   -- U+1D7CF..: mathematical bold
      { "national_id", '"１１０１０５１９４９１２３１００２Ｘ"', '"１１０１０５********００２Ｘ"' },
      { "national_id", '"١٢٣-٤٥-٦٧٨٩"', '"***-**-٦٧٨٩"' },
      { "national_id", '"ＡＢ１２３４５６７"', '"*****４５６７"' },
      -- a value a masker cannot read is redacted whole (fail closed)
      { "phone", '"\255\254 13812345678"', '"[redacted]"' },
      { "phone", '"1381234\195 5678"', '"[redacted]"' },                               -- truncated sequence
      { "phone", '"\192\177\192\179\192\184 12345678"', '"[redacted]"' },          -- overlong "138"
      { "phone", '"\237\160\128 13812345678"', '"[redacted]"' },                     -- surrogate
      { "phone", '"\244\144\128\128 13812345678"', '"[redacted]"' },                -- above U+10FFFF
      { "national_id", '"\255110105194912310021"', '"[redacted]"' },
      { "email", '"\255john@example.com"', '"[redacted]"' },
      { "email", '"\195\169\169\169x@example.com"', '"[redacted]"' },               -- stray continuations
      { "email", '"john@\255example.com"', '"[redacted]"' },
      { "phone", "true", '"true"' },
      { "phone", "[]", '"[redacted]"' },
      { "national_id", '[1,2]', '"[redacted]"' },
      { "redact", '"secret"', '"[redacted]"' },
      { "redact", "42", '"[redacted]"' },
      { "redact", "true", '"[redacted]"' },
      { "redact", '{"a":1}', '"[redacted]"' },
      { "redact", "null", "null" },
      { { "hash", salt = "pepper" }, '"42"',
        '"' .. require("sluice.crypto").hex(require("sluice.crypto").hmac("sha256", "pepper", "42")) .. '"' },
      { { "hash", salt = "pepper" }, "42",
        '"' .. require("sluice.crypto").hex(require("sluice.crypto").hmac("sha256", "pepper", "42")) .. '"' },
      { { "hash", salt = "pepper", len = 12 }, '"42"',
        '"' .. require("sluice.crypto").hex(require("sluice.crypto").hmac("sha256", "pepper", "42")):sub(1, 12) .. '"' },
    }
    for _, c in ipairs(cases) do
      local name = type(c[1]) == "table" and ("hash len=" .. tostring(c[1].len)) or c[1]
      it(name .. ": " .. c[2] .. " -> " .. c[3], function()
        local out = one("f", c[1], '{"f":' .. c[2] .. ',"other":"keep"}')
        local got, want = decode(out), decode('{"f":' .. c[3] .. ',"other":"keep"}')
        assert.are.same(want, got)
      end)
    end

    it("hash is HMAC-SHA256 (RFC 4231 test case 2)", function()
      local out = one("f", { "hash", salt = "Jefe" }, '{"f":"what do ya want for nothing?"}')
      assert.are.equal("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", decode(out).f)
    end)

    it("drop removes the field", function()
      local out, ops = one("f", "drop", '{"f":"x","g":1}')
      assert.are.same({ g = 1 }, decode(out))
      assert.are.equal(1, ops)
    end)
  end)

  describe("paths", function()
    local doc = [=[{
      "user": {"id": 7, "phone": "13812345678", "profile": {"email": "ann@example.com"}},
      "items": [{"card": "4111", "sku": "a"}, {"card": "5500", "sku": "b"}, {"sku": "c"}],
      "matrix": [[1, 2], [3, 4]],
      "map": {"x": {"secret": 1}, "y": {"secret": 2}, "z": {"public": 3}},
      "0": "zero key",
      "dot.ted": "d",
      "list": ["a", "b", "c", "d"]
    }]=]
    -- rules, expected ops, function(decoded output) assertions
    local cases = {
      { "nested object", { { "user.profile.email", "email" } }, 1,
        function(o) assert.are.equal("a***@example.com", o.user.profile.email) end },
      { "array wildcard", { { "items.*.card", "redact" } }, 2,
        function(o)
          assert.are.equal("[redacted]", o.items[1].card)
          assert.are.equal("[redacted]", o.items[2].card)
          assert.is_nil(o.items[3].card)
          assert.are.equal("c", o.items[3].sku)
        end },
      { "object wildcard", { { "map.*.secret", "drop" } }, 2,
        function(o) assert.are.same({ x = {}, y = {}, z = { public = 3 } }, o.map) end },
      { "wildcard leaf on object", { { "user.*", "redact" } }, 3,
        function(o) assert.are.same({ id = "[redacted]", phone = "[redacted]", profile = "[redacted]" }, o.user) end },
      { "index is 0-based", { { "items.0.card", "redact" } }, 1,
        function(o)
          assert.are.equal("[redacted]", o.items[1].card)
          assert.are.equal("5500", o.items[2].card)
        end },
      { "index out of range", { { "items.9.card", "redact" } }, 0, nil },
      { "nested arrays", { { "matrix.*.1", "redact" } }, 2,
        function(o) assert.are.same({ { 1, "[redacted]" }, { 3, "[redacted]" } }, o.matrix) end },
      { "digits on an object are a key", { { "0", "redact" } }, 1,
        function(o) assert.are.equal("[redacted]", o["0"]) end },
      { "escaped dot", { { "dot\\.ted", "redact" } }, 1,
        function(o) assert.are.equal("[redacted]", o["dot.ted"]) end },
      { "drop array element shifts", { { "list.1", "drop" } }, 1,
        function(o) assert.are.same({ "a", "c", "d" }, o.list) end },
      { "drop every element", { { "list.*", "drop" } }, 4,
        function(o) assert.are.same({}, o.list) end },
      { "custom nil removes array elements", { { "list.*", function(v) if v ~= "b" then return v end end } }, 4,
        function(o) assert.are.same({ "a", "c", "d" }, o.list) end },
      { "missing fields are ignored", { { "nope", "redact" }, { "user.nope.deeper", "redact" }, { "items.*.nope", "drop" } }, 0, nil },
      { "type mismatch is ignored", { { "user.phone.x", "redact" }, { "list.name", "redact" }, { "user.0", "redact" } }, 0, nil },
      { "rules run in order", { { "user.phone", "phone" }, { "user.phone", function(v) return "<" .. v .. ">" end } }, 2,
        function(o) assert.are.equal("<138****5678>", o.user.phone) end },
      { "several rules", { { "user.phone", "phone" }, { "items.*.card", "redact" }, { "user.id", { "hash", salt = "s", len = 8 } } }, 4,
        function(o)
          assert.are.equal("138****5678", o.user.phone)
          assert.are.equal(8, #o.user.id)
        end },
    }
    for _, c in ipairs(cases) do
      it(c[1], function()
        local out, ops = mask.compile { rules = c[2] }:apply(doc)
        assert.are.equal(c[3], ops)
        if c[3] == 0 then
          assert.are.equal(doc, out) -- untouched, byte for byte
        else
          c[4](decode(out))
        end
      end)
    end

    it("top-level array", function()
      local out, ops = one("*.phone", "phone", '[{"phone":"13812345678"},{"phone":"13900001111"}]')
      assert.are.equal(2, ops)
      assert.are.same({ { phone = "138****5678" }, { phone = "139****1111" } }, decode(out))
      out = one("1.phone", "redact", '[{"phone":"1"},{"phone":"2"}]')
      assert.are.same({ { phone = "1" }, { phone = "[redacted]" } }, decode(out))
    end)

    it("custom masker gets the value and the concrete path", function()
      local seen = {}
      local out = one("items.*.card", function(v, path)
        seen[#seen + 1] = path .. "=" .. v
        return "****" .. v:sub(-2)
      end, doc)
      assert.are.same({ "items.0.card=4111", "items.1.card=5500" }, seen)
      assert.are.equal("****11", decode(out).items[1].card)
    end)

    it("custom masker may return tables, numbers, mask.null and empty arrays", function()
      local out = mask.compile { rules = {
        { "a", function() return { x = 1, y = { 1, 2 } } end },
        { "b", function() return 2.5 end },
        { "c", function() return mask.null end },
        { "d", function() return mask.empty_array() end },
      } }:apply('{"a":1,"b":1,"c":1,"d":1}')
      assert.truthy(out:find('"d":[]', 1, true), out)
      assert.truthy(out:find('"c":null', 1, true), out)
      local o = decode(out)
      assert.are.same({ x = 1, y = { 1, 2 } }, o.a)
      assert.are.equal(2.5, o.b)
    end)

    it("a failing custom masker raises with the rule and the path", function()
      local m = mask.compile { rules = { { "items.*.card", function(v) if v == "5500" then error("boom") end return v end } } }
      local ok, err = pcall(m.apply, m, doc)
      assert.is_false(ok)
      assert.truthy(err:find("custom masker for 'items.*.card' failed at 'items.1.card'", 1, true), err)
      assert.truthy(err:find("boom", 1, true), err)
    end)

    it("a custom masker returning something unencodable raises", function()
      local m = mask.compile { rules = { { "a", function() return print end } } }
      assert.has_error(function() m:apply('{"a":1}') end, "sluice.mask: cannot encode a function value as JSON")
    end)
  end)

  describe("invalid payloads", function()
    local payloads = { "not json", "", "   ", "42", '"a string"', "true", "null", "{broken", '{"a":NaN}', '[1,Infinity]' }
    local policies = {
      { "raw", function(p) return p end, 0 },
      { "drop", function() return nil end, 1 },
      { "redact", function() return '"[redacted]"' end, 1 },
    }
    for _, pol in ipairs(policies) do
      for _, p in ipairs(payloads) do
        it(string.format("on_invalid=%s with %q", pol[1], p), function()
          local m = mask.compile { rules = { { "a", "redact" } }, on_invalid = pol[1] }
          local out, ops, err = m:apply(p)
          assert.are.equal(pol[2](p), out)
          assert.are.equal(pol[3], ops)
          assert.are.equal("invalid_json", err)
        end)
      end
    end

    it("defaults to redact", function()
      assert.are.equal('"[redacted]"', (mask.compile { rules = { { "a", "redact" } } }:apply("oops")))
      assert.are.equal('"[redacted]"', (mask.compile({ { "a", "redact" } }):apply("oops")))
    end)

    it("a non-string payload is an error", function()
      local m = mask.compile { { "a", "redact" } }
      assert.has_error(function() m:apply({}) end)
    end)
  end)

  describe("JSON fidelity", function()
    it("keeps empty arrays and objects apart", function()
      local out = one("x", "redact", '{"x":1,"a":[],"o":{},"n":{"a":[ ],"s":"[]","e":"\\"[]"},"m":[[],{}]}')
      local o = decode(out)
      assert.truthy(out:find('"a":[]', 1, true), out)
      assert.truthy(out:find('"o":{}', 1, true), out)
      assert.truthy(out:find('"m":[[],{}]', 1, true), out)
      assert.are.equal("[]", o.n.s)
      assert.are.equal('"[]', o.n.e)
      assert.truthy(out:find('"a":[]', out:find('"n":', 1, true), true), out)
    end)

    it("wildcards do not see the empty-array marker", function()
      local out, ops = one("a.*", function() return "X" end, '{"a":[],"b":1}')
      assert.are.equal(0, ops)
      assert.are.equal('{"a":[],"b":1}', out)
      out, ops = one("a.0", "redact", '{"a":[]}')
      assert.are.equal(0, ops)
    end)

    it("custom maskers see empty arrays as empty tables", function()
      local seen
      local out = one("a", function(v) seen = v; return v end, '{"a":{"l":[],"k":[1]}}')
      assert.are.same({ l = {}, k = { 1 } }, seen)
      assert.are.equal(mask.array_mt, getmetatable(seen.l))
      assert.truthy(out:find('"l":[]', 1, true), out)
    end)

    it("keeps numbers exact", function()
      local nums = { "1712345678901234", "9007199254740991", "-42", "0", "0.1", "3.141592653589793", "1e+300", "-2.5e-08", "123456789.125" }
      local out = one("x", "redact", '{"x":1,"n":[' .. table.concat(nums, ",") .. "]}")
      local o = decode(out)
      for i, s in ipairs(nums) do
        assert.are.equal(tonumber(s), o.n[i], s)
      end
      assert.truthy(out:find("1712345678901234", 1, true), out)
    end)

    it("escapes strings correctly", function()
      local s = '{"x":1,"s":"q\\" b\\\\ n\\n t\\t u\\u0001 \\u00e9 / \\u2028"}'
      local o = decode(one("x", "redact", s))
      assert.are.same(decode(s).s, o.s)
    end)

    it("does not change global cjson settings", function()
      local global = require "cjson"
      local v = global.decode("NaN") -- mask's own instance refuses NaN; the global one still accepts it
      assert.is_true(v ~= v)
    end)
  end)

  describe("keys and compile", function()
    local R = { { "user.phone", "phone" }, { "email", "email" } }
    local f = function(v) return v end
    it("same rules give the same key and the same masker", function()
      local a = mask.compile { rules = R }
      local b = mask.compile { rules = { { "user.phone", "phone" }, { "email", "email" } } }
      assert.are.equal(a.key, b.key)
      assert.are.equal(a, b)
      assert.are.equal(a.key, mask.key { rules = R })
      assert.truthy(a.key:match("^mask:%x+$"))
    end)
    local different = {
      { "order", { rules = { { "email", "email" }, { "user.phone", "phone" } } } },
      { "masker", { rules = { { "user.phone", "redact" }, { "email", "email" } } } },
      { "path", { rules = { { "user.phone2", "phone" }, { "email", "email" } } } },
      { "on_invalid", { rules = R, on_invalid = "raw" } },
      { "extra rule", { rules = { { "user.phone", "phone" }, { "email", "email" }, { "x", "drop" } } } },
    }
    for _, d in ipairs(different) do
      it("differs by " .. d[1], function()
        assert.are_not.equal(mask.key { rules = R }, mask.key(d[2]))
      end)
    end
    it("hash salts change the key and do not appear in it", function()
      local a = mask.key { { "id", { "hash", salt = "salt-one" } } }
      local b = mask.key { { "id", { "hash", salt = "salt-two" } } }
      assert.are_not.equal(a, b)
      assert.is_nil(a:find("salt-one", 1, true))
    end)
    it("functions are keyed by identity", function()
      local g = function(v) return v end
      assert.are.equal(mask.key { { "a", f } }, mask.key { { "a", f } })
      assert.are_not.equal(mask.key { { "a", f } }, mask.key { { "a", g } })
    end)
    it("map form can mask a field named rules", function()
      local out, ops = mask.compile({ rules = "redact" }):apply('{"rules":"x","y":1}')
      assert.are.equal(1, ops)
      assert.are.same({ rules = "[redacted]", y = 1 }, decode(out))
    end)
    it("map form is applied in sorted path order", function()
      local m = mask.compile { ["user.phone"] = "phone", email = "email" }
      assert.are.equal(mask.key { { "email", "email" }, { "user.phone", "phone" } }, m.key)
      local out, ops = m:apply('{"email":"bob@x.io","user":{"phone":"13812345678"}}')
      assert.are.equal(2, ops)
      assert.are.same({ email = "b***@x.io", user = { phone = "138****5678" } }, decode(out))
    end)
  end)

  describe("configuration errors", function()
    local cases = {
      { nil, "spec table required" },
      { {}, "no rules" },
      { { rules = {} }, "no rules" },
      { { { "a" } }, "rule 1 must be { path, masker }" },
      { { "phone" }, "rule 1 must be { path, masker }" },
      { { { "a", "scramble" } }, "unknown masker 'scramble'" },
      { { { "a", "hash" } }, "hash needs a salt" },
      { { { "a", { "hash" } } }, "needs a non-empty salt" },
      { { { "a", { "hash", salt = "s", len = 65 } } }, "between 1 and 64" },
      { { { "a..b", "redact" } }, "empty segment" },
      { { { "", "redact" } }, "non-empty string" },
      { { { "a", 42 } }, "masker must be" },
      { { rules = { { "a", "redact" } }, on_invalid = "ignore" }, "on_invalid must be" },
    }
    expect_refused(mask.compile, cases)
  end)
end)
