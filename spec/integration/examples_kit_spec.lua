-- `sluice test DIR` runs an app project's specs: the examples' own specs
-- (examples/*/spec, written with sluice.testing) pass, and they catch a
-- real regression: with the support view's masking broken they fail, and
-- `sluice test` exits non-zero.
local server = require "server"

local ROOT = os.getenv("SLUICE_ROOT") or "."
local BIN = os.getenv("SLUICE_BIN") or (ROOT .. "/sluice")

-- Runs `sluice test DIR`; its exit status and output.
local function sluice_test(dir)
  local out = server.sh(("cd %s && %s test %s 2>&1; echo \"exit=$?\""):format(ROOT, BIN, dir))
  return tonumber(out:match("exit=(%d+)%s*$")), out
end

describe("sluice test", function()
  for _, dir in ipairs { "examples/orders", "examples/rollout" } do
    it("passes the specs of " .. dir, function()
      local status, out = sluice_test(dir)
      assert.equal(0, status, out)
      assert.matches("%d+ successes / 0 failures / 0 errors", out)
    end)
  end

  it("fails, and says which spec, when the orders example stops masking phones", function()
    local tmp = server.tmpdir()
    finally(function() os.execute("rm -rf " .. tmp) end)
    os.execute(("cp -R %s/examples/orders/. %s/"):format(ROOT, tmp))
    local path = tmp .. "/orders.lua"
    local src = server.read_file(path)
    local broken, n = src:gsub('{ "customer%.phone", "phone" },', "", 1)
    assert.equal(1, n, "the example changed: update this spec's breakage")
    server.write_file(path, broken)
    local status, out = sluice_test(tmp)
    assert.is_true(status ~= 0, out)
    assert.matches("support staff see the phone, the email and the card masked", out, 1, true)
    assert.matches("138****5678", out, 1, true)
    -- the kit showed the server log of the failed test
    assert.matches("---- sluice log (test failed: support staff see the phone", out, 1, true)
  end)

  it("exits non-zero for a directory that does not exist", function()
    local status, out = sluice_test("/nonexistent/sluice-app")
    assert.equal(2, status, out)
    assert.matches("not a directory", out)
  end)
end)
