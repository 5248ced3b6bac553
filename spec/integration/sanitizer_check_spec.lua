-- The sanitizer check must be able to fail: a server that leaks or hits
-- undefined behaviour makes its spec fail (server.lua's stop() raises and
-- keeps the log) and `spec/run` exit non-zero. Proved with tiny stand-in
-- "servers" built here with the sanitizers, each planting one real report.
-- The planted reports are removed afterwards so this run stays clean.
local server = require "server"
local sanitizer = require "sanitizer"

-- Announces a port as sluice does, then waits for SIGTERM and exits.
local FAKE = [[
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
void *kept;
int main(int argc, char **argv)
{
    (void)argv;
    sigset_t set;
    int sig;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    fprintf(stderr, "sluice listening on 127.0.0.1:1, apps from nowhere\n");
#ifdef PLANT_LEAK
    kept = malloc(77);      /* lost below: a definite leak at exit */
    kept = NULL;
#endif
#ifdef PLANT_UB
    int big = INT_MAX - 1;
    big += argc + 1;         /* signed overflow */
    fprintf(stderr, "%d\n", big);
#endif
    sigwait(&set, &sig);
    return 0;
}
]]

local function build(dir, flags, define)
  local src, bin = dir .. "/fake.c", dir .. "/fake-" .. define
  server.write_file(src, FAKE)
  local out = server.sh(("cc -g %s -D%s -o %s %s 2>&1; echo \"rc=$?\""):format(flags, define, bin, src))
  if not out:find("rc=0", 1, true) then return nil, out end
  return bin
end

-- Removes what a planted report left: the kept server directory and the
-- report files in the run's sanitizer directory.
local function forget(srv)
  for _, path in ipairs(sanitizer.files_of(srv.pid)) do os.remove(path) end
  os.execute("rm -rf " .. srv.dir)
end

describe("the sanitizer check", function()
  local work
  setup(function() work = server.tmpdir() end)
  teardown(function() os.execute("rm -rf " .. work) end)

  for _, case in ipairs {
    { name = "a leak (LeakSanitizer)", flags = "-fsanitize=address", define = "PLANT_LEAK",
      expect = "LeakSanitizer" },
    { name = "undefined behaviour (UBSan)", flags = "-fsanitize=undefined", define = "PLANT_UB",
      expect = "runtime error:" },
  } do
    it("fails the spec whose server reported " .. case.name .. " and keeps its log", function()
      local bin, why = build(work, case.flags, case.define)
      assert.is_truthy(bin, "cannot build the planted program (cc with sanitizers is needed):\n" .. tostring(why))
      local srv = server.start { bin = bin }
      local ok, err = pcall(srv.stop, srv)
      local kept = server.read_file(srv.log_path)
      forget(srv)
      assert.is_false(ok, "stop() did not fail on a server that reported " .. case.name)
      assert.matches(case.expect, tostring(err), 1, true)
      assert.is_truthy(kept, "the log of the server that reported was deleted")
    end)
  end

  it("passes a server that reported nothing, and removes its directory", function()
    local bin = assert(build(work, "-fsanitize=address,undefined", "CLEAN"))
    local srv = server.start { bin = bin }
    srv:stop()
    assert.is_nil(server.read_file(srv.log_path))
  end)

  it("makes spec/run's final check exit non-zero on any report file", function()
    local dir = work .. "/reports"
    os.execute("mkdir -p " .. dir)
    local script = (os.getenv("SLUICE_ROOT") or ".") .. "/spec/helpers/sanitizer.lua"
    local clean = server.sh(("luajit %s %s; echo \"rc=$?\""):format(script, dir))
    assert.matches("rc=0", clean, 1, true)
    server.write_file(dir .. "/asan.4242",
      "==4242==ERROR: AddressSanitizer: heap-use-after-free on address 0x1\n" ..
      "SUMMARY: AddressSanitizer: heap-use-after-free x.c:1 in f\n")
    local out = server.sh(("luajit %s %s; echo \"rc=$?\""):format(script, dir))
    assert.matches("rc=1", out, 1, true)
    assert.matches("heap-use-after-free", out, 1, true)
    assert.matches("1 sanitizer report", out, 1, true)
  end)

  it("recognises reports in a server log, not ordinary log lines", function()
    assert.is_nil(sanitizer.marker("2026-01-01T00:00:00Z [error] app.lua:3: attempt to call nil"))
    assert.is_truthy(sanitizer.marker("x.c:9:5: runtime error: signed integer overflow"))
    assert.is_truthy(sanitizer.marker("==1==ERROR: AddressSanitizer: SEGV on unknown address"))
  end)
end)
