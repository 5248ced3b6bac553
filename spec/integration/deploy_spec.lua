-- The deployment files in examples/deploy/, checked with the tools that
-- read them and by running sluice (and nginx) with what they say:
--   sluice.service    systemd-analyze verify and security; sluice run under
--                     strace with the unit's options, every system call it
--                     makes inside the unit's SystemCallFilter
--   nginx-sluice.conf nginx -t, then a live stream through it over TLS and
--                     HTTP/2 (curl), with the headers sluice receives
--   kubernetes.yaml   parsed (python3-yaml) into the expected objects, the
--                     probes, ports and grace periods agreeing with the
--                     sluice arguments, the ConfigMap's scripts loading
-- A check whose tool is missing is pending and says which tool.
local server = require "server"
local raw = require "raw"
local cjson = require "cjson"

local ROOT = os.getenv("SLUICE_ROOT") or "."
local DEPLOY = ROOT .. "/examples/deploy"
local BIN = os.getenv("SLUICE_BIN") or (ROOT .. "/sluice")
if BIN:sub(1, 1) ~= "/" then BIN = ROOT .. "/" .. BIN end
local NGINX = os.getenv("NGINX_BIN") or "/usr/sbin/nginx"
-- sluice exits by itself this long after its --shutdown-grace
-- (SIGNALS_EXIT_MARGIN in core/signals.h)
local EXIT_MARGIN = 1
-- Options other work in progress adds to sluice. A deployment file may use
-- them before they are merged: the checks that need them are pending then.
local IN_FLIGHT = {}   -- options not merged yet (skipped, not failed): none now

local read_file, write_file = server.read_file, server.write_file

-- A shell command's output (stdout and stderr) and exit status.
local function run(cmd)
  local out = server.sh("( " .. cmd .. " ) 2>&1; echo \"__rc=$?\"")
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  return (out:gsub("__rc=%d+%s*$", "")), rc
end

local function tool(path_or_name)
  if path_or_name:sub(1, 1) == "/" then
    local f = io.open(path_or_name, "rb")
    if f then f:close(); return path_or_name end
    return nil
  end
  local out, rc = run("command -v " .. path_or_name)
  if rc == 0 then return (out:gsub("%s+$", "")) end
  return nil
end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- Replaces the one occurrence of `from` (plain text) in text; a file that no
-- longer has it fails the spec with the string, so spec and file stay in step.
local function replace_once(text, from, to, what)
  local i, j = text:find(from, 1, true)
  assert(i, ("%s no longer contains %q, which this spec replaces"):format(what, from))
  assert(not text:find(from, j + 1, true), ("%s contains %q more than once"):format(what, from))
  return text:sub(1, i - 1) .. to .. text:sub(j + 1)
end

-- The options sluice --help lists.
local known_options
local function sluice_knows(opt)
  if not known_options then
    known_options = {}
    local help = run(q(BIN) .. " --help")
    for o in help:gmatch("%-%-[%w%-]+") do known_options[o] = true end
  end
  return known_options[opt] == true
end

-- "--opt value" pairs of an argument list into a table (flags: true).
local function options_of(args)
  local opts, i = {}, 1
  while i <= #args do
    local a = args[i]
    assert(a:sub(1, 2) == "--", "not an option: " .. a)
    if args[i + 1] and args[i + 1]:sub(1, 2) ~= "--" then
      opts[a] = args[i + 1]; i = i + 2
    else
      opts[a] = true; i = i + 1
    end
  end
  return opts
end

-- Options sluice does not know: an error for a typo, a list of the
-- in-flight ones (to skip) otherwise.
local function unknown_options(args)
  local waiting = {}
  for _, a in ipairs(args) do
    if a:sub(1, 2) == "--" and not sluice_knows(a) then
      assert(IN_FLIGHT[a], ("sluice --help does not list %s"):format(a))
      waiting[#waiting + 1] = a
    end
  end
  return waiting
end

local function port_of(hostport)
  return tonumber(tostring(hostport):match(":(%d+)$"))
end

local function wait_port(port, pid, secs)
  return raw.eventually(function()
    if pid and not server.alive(pid) then return "dead" end
    local c = raw.connect(port)
    if c then c:close(); return "up" end
  end, secs or 10, 0.05) == "up"
end

local function stop_pid(pid)
  if pid and server.alive(pid) then
    os.execute(("kill -KILL %d 2>/dev/null"):format(pid))
    raw.eventually(function() return not server.alive(pid) end, 2)
  end
end

local STREAM_APP = [[
local sluice = require "sluice"
local app = sluice.app()
app:stream("/events", function(req, s) s:subscribe("news") end)
app:post("/pub", function(req)
  local _, n = sluice.publish("news", { event = "update", data = req.body })
  return 200, tostring(n)
end)
-- what reached sluice through a proxy
app:get("/seen", function(req)
  return 200, { id = req.id, trace_id = req.trace_id,
                xff = req.headers["x-forwarded-for"] or "",
                proto = req.headers["x-forwarded-proto"] or "",
                host = req.headers["host"] or "" }
end)
return app
]]

-------------------------------------------------------------------------------
-- systemd

-- The unit as { Section = { key = { values... } } }, continuation lines joined.
local function parse_unit(text)
  local unit, section = {}, nil
  text = text:gsub("\\\n", " ")
  for line in text:gmatch("[^\n]+") do
    local name = line:match("^%[([%w]+)%]$")
    if name then
      section = {}; unit[name] = section
    elseif not line:find("^%s*[#;]") and line:find("=", 1, true) then
      local k = line:match("^([%w]+)=")
      assert(k and section, "a line outside a section or without a key: " .. line)
      local v = line:sub(#k + 2)
      section[k] = section[k] or {}
      table.insert(section[k], v)
    end
  end
  return unit
end

local function words(s)
  local out = {}
  for w in s:gmatch("%S+") do out[#out + 1] = w end
  return out
end

local function seconds(v)
  local n, unit = tostring(v):match("^(%d+)%s*(%a*)$")
  assert(n, "not a time span this spec reads: " .. tostring(v))
  local mult = ({ [""] = 1, s = 1, sec = 1, min = 60, m = 60 })[unit]
  assert(mult, "not a time unit this spec reads: " .. unit)
  return tonumber(n) * mult
end

local UNIT_BIN = "/usr/local/bin/sluice"

describe("examples/deploy/sluice.service", function()
  local text = assert(read_file(DEPLOY .. "/sluice.service"), "examples/deploy/sluice.service is missing")
  local unit = parse_unit(text)
  local svc = assert(unit.Service, "no [Service] section")
  local function one(key)
    local v = svc[key]
    assert(v, key .. "= is not set")
    return v[#v]
  end
  local exec = words(one("ExecStart"))
  assert.equal(UNIT_BIN, exec[1])
  local args = {}
  for i = 2, #exec do args[#args + 1] = exec[i] end
  local opts = options_of(args)

  it("passes systemd-analyze verify", function()
    local sa = tool("systemd-analyze")
    if not sa then
      pending("systemd-analyze is not installed (package systemd): the unit was not verified")
      return
    end
    -- verify wants ExecStart's binary to exist: the one under test
    local dir = server.tmpdir()
    local path = dir .. "/sluice.service"
    write_file(path, replace_once(text, "ExecStart=" .. UNIT_BIN, "ExecStart=" .. BIN, "sluice.service"))
    local out, rc = run(q(sa) .. " verify " .. q(path))
    os.execute("rm -rf " .. q(dir))
    -- an unknown key is only a warning (exit 0): any line naming the file fails
    assert.is_true(rc == 0 and not out:find("sluice.service", 1, true),
      "systemd-analyze verify (exit " .. tostring(rc) .. "):\n" .. out)
  end)

  it("is rated OK by systemd-analyze security", function()
    local sa = tool("systemd-analyze")
    if not sa then
      pending("systemd-analyze is not installed (package systemd): the sandbox was not rated")
      return
    end
    local dir = server.tmpdir()
    local path = dir .. "/sluice.service"
    write_file(path, replace_once(text, "ExecStart=" .. UNIT_BIN, "ExecStart=" .. BIN, "sluice.service"))
    local out, rc = run(q(sa) .. " security --offline=yes " .. q(path))
    os.execute("rm -rf " .. q(dir))
    local level = tonumber(out:match("Overall exposure level for sluice%.service: ([%d%.]+)"))
    if not level and out:find("offline", 1, true) then
      pending("this systemd-analyze has no `security --offline` (systemd 250 or later): not rated")
      return
    end
    assert(level, "no exposure level (exit " .. tostring(rc) .. "):\n" .. out)
    -- 0 is a fully locked-down service, 10 an unsandboxed one
    assert.is_true(level <= 2.0, ("exposure %.1f; expected at most 2.0:\n%s"):format(level, out))
  end)

  it("sandboxes the service and keeps the settings sluice needs", function()
    local want = {
      DynamicUser = "yes", NoNewPrivileges = "yes", ProtectSystem = "strict",
      ProtectHome = "yes", PrivateTmp = "yes", ProtectKernelTunables = "yes",
      ProtectKernelModules = "yes", ProtectKernelLogs = "yes", ProtectControlGroups = "yes",
      RestrictAddressFamilies = "AF_INET AF_INET6 AF_UNIX", SystemCallArchitectures = "native",
      CapabilityBoundingSet = "", KillSignal = "SIGTERM", Restart = "on-failure",
      LogsDirectory = "sluice", RuntimeDirectory = "sluice",
    }
    for k, v in pairs(want) do assert.equal(v, one(k), k .. "=") end
    assert.matches("^/bin/kill %-HUP %$MAINPID$", one("ExecReload"))
    -- MemoryDenyWriteExecute would stop LuaJIT's compiler (--lua-cpu-budget 0)
    assert.is_nil(svc.MemoryDenyWriteExecute)
    -- what sluice writes is where the unit lets it write
    assert.matches("^/var/log/sluice/", opts["--access-log"])
    assert.matches("^/run/sluice/", opts["--pid-file"])
    assert.matches("^/etc/sluice/", opts["--apps"])
    -- both ports on loopback behind nginx, and apart
    assert.matches("^127%.0%.0%.1:%d+$", opts["--listen"])
    if opts["--admin-listen"] then
      assert.matches("^127%.0%.0%.1:%d+$", opts["--admin-listen"])
      assert.are_not.equal(port_of(opts["--listen"]), port_of(opts["--admin-listen"]))
    end
  end)

  it("lets sluice drain before systemd kills it", function()
    local grace = tonumber(opts["--shutdown-grace"] or 5)
    local stop = seconds(one("TimeoutStopSec"))
    assert.is_true(stop > grace + EXIT_MARGIN,
      ("TimeoutStopSec=%d is not above --shutdown-grace %s + %d s"):format(stop, grace, EXIT_MARGIN))
  end)

  it("allows enough open files for the streams, within the kernel's bound", function()
    local nofile = tonumber(one("LimitNOFILE"))
    assert(nofile, "LimitNOFILE= is not one number")
    assert.is_true(nofile >= 65536, "LimitNOFILE below 65536: each stream holds one")
    assert.is_true(nofile <= 1048576, "LimitNOFILE above fs.nr_open's default 1048576")
    if opts["--max-conns"] then
      assert.is_true(tonumber(opts["--max-conns"]) <= nofile - 64, "--max-conns above LimitNOFILE - 64")
    end
  end)

  it("starts sluice only with options it knows", function()
    local waiting = unknown_options(args)
    if #waiting > 0 then
      pending("not in this build's sluice --help yet: " .. table.concat(waiting, " "))
    end
  end)

  -- The unit's options, run for real: sluice serves, reloads (sluice reload
  -- --pid-file), reopens its access log after a logrotate-style move
  -- (SIGUSR1), drains on SIGTERM; under strace, every system call it made
  -- is one SystemCallFilter allows, so the filter will not break it.
  it("runs with the unit's options, and every system call it makes passes its SystemCallFilter", function()
    local strace, sa = tool("strace"), tool("systemd-analyze")
    if not strace or not sa then
      pending("strace and systemd-analyze are needed to check the SystemCallFilter: "
        .. (strace and "" or "strace ") .. (sa and "" or "systemd-analyze ") .. "missing")
      return
    end
    local dir = server.tmpdir()
    os.execute(("mkdir -p %s/apps %s/log %s/run"):format(q(dir), q(dir), q(dir)))
    write_file(dir .. "/apps/app.lua", STREAM_APP)
    local port, admin_port = raw.free_port(), raw.free_port()
    local subst = {
      ["--listen"] = "127.0.0.1:" .. port, ["--admin-listen"] = "127.0.0.1:" .. admin_port,
      ["--apps"] = dir .. "/apps", ["--lua-path"] = ROOT .. "/lua",
      ["--access-log"] = dir .. "/log/access.log", ["--pid-file"] = dir .. "/run/sluice.pid",
    }
    -- an option not merged yet is left out (the check above says so)
    local cmd = { q(BIN) }
    local i = 1
    while i <= #args do
      local a, v = args[i], args[i + 1]
      local has_value = v and v:sub(1, 2) ~= "--"
      if not (a:sub(1, 2) == "--" and not sluice_knows(a) and IN_FLIGHT[a]) then
        cmd[#cmd + 1] = a
        if has_value then cmd[#cmd + 1] = q(subst[a] or v) end
      end
      i = i + (has_value and 2 or 1)
    end
    local trace = dir .. "/strace.out"
    -- LeakSanitizer cannot run under ptrace (a build from make asan)
    local spid = tonumber(server.sh(("ASAN_OPTIONS=\"${ASAN_OPTIONS:-}:detect_leaks=0\" "
      .. "exec %s -f -qq -o %s %s >%s/stdout.log 2>%s/stderr.log & echo $!")
      :format(q(strace), q(trace), table.concat(cmd, " "), q(dir), q(dir))))
    local pid
    local ok, err = pcall(function()
      assert.is_true(wait_port(port, spid, 20), "sluice did not start under strace:\n"
        .. (read_file(dir .. "/stderr.log") or ""))
      pid = raw.eventually(function()
        return tonumber((read_file(dir .. "/run/sluice.pid") or ""):match("%d+"))
      end, 5)
      assert(pid, "no pid file at --pid-file")
      -- a stream and an event through it
      local c = assert(raw.connect(port))
      assert(c:send("GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"))
      assert.is_true(c:wait_for("retry:", 5), "the stream did not open")
      local n = raw.eventually(function()
        local r = raw.exchange(port, raw.request("POST", "/pub", nil, "one"))
        return r and r.body ~= "0" and r.body
      end, 5)
      assert.equal("1", n)
      assert.is_true(c:wait_for("data: one\n", 5), "the event did not arrive")
      -- a reload, as systemctl reload or a deploy script does it
      write_file(dir .. "/apps/app.lua", STREAM_APP .. "\n-- v2\n")
      local out, rc = run(("%s reload --pid-file %s"):format(q(BIN), q(dir .. "/run/sluice.pid")))
      assert.equal(0, rc, "sluice reload: " .. out)
      -- logrotate: move the log away, SIGUSR1, the next line goes to a new file
      assert(os.rename(dir .. "/log/access.log", dir .. "/log/access.log.1"))
      os.execute(("kill -USR1 %d"):format(pid))
      local fresh = raw.eventually(function()
        raw.exchange(port, raw.request("GET", "/seen", { { "Connection", "close" } }))
        local l = read_file(dir .. "/log/access.log")
        return l and l:find("/seen", 1, true) ~= nil
      end, 5, 0.1)
      assert.is_true(fresh, "after SIGUSR1 the access log was not reopened at its path")
      -- the admin listener's answers, when this build has one
      if opts["--admin-listen"] and sluice_knows("--admin-listen") then
        for _, path in ipairs({ "/healthz", "/readyz", "/metrics" }) do
          local r = raw.exchange(admin_port, raw.request("GET", path, { { "Connection", "close" } }))
          assert(r, "no answer on the admin port's " .. path)
          assert.equal(200, r.status, path)
        end
      end
      -- systemctl stop: SIGTERM; the stream is ended, sluice exits
      os.execute(("kill -TERM %d"):format(pid))
      assert.is_true(c:wait_closed(10), "the stream was not ended on SIGTERM")
      c:close()
      assert.is_true(raw.eventually(function() return not server.alive(pid) end, 15),
        "sluice did not exit after SIGTERM")
      -- the server's own log lines, as the journal gets them: JSON
      local lines = 0
      for line in (read_file(dir .. "/stderr.log") or ""):gmatch("[^\n]+") do
        if line:sub(1, 1) == "{" then
          lines = lines + 1
          assert(pcall(cjson.decode, line), "a --log-format json line is not JSON: " .. line)
        end
      end
      assert.is_true(lines > 0, "no JSON log lines on stderr")
    end)
    if pid then stop_pid(pid) end
    raw.eventually(function() return not server.alive(spid) end, 5)
    stop_pid(spid)
    if not ok then os.execute("rm -rf " .. q(dir)); error(err, 0) end

    -- every group the unit names, expanded (groups name groups)
    local groups = {}
    local function expand(name, into)
      if not groups[name] then
        local set, out = {}, run(q(sa) .. " syscall-filter " .. q(name))
        local first = true
        for line in (out .. "\n"):gmatch("([^\n]*)\n") do
          if first then
            assert(line == name, "systemd-analyze syscall-filter " .. name .. ": " .. out)
            first = false
          elseif line == "" then break
          else
            local member = line:match("^%s+([@%w_%-]+)%s*$")
            if member then set[#set + 1] = member end
          end
        end
        groups[name] = set
      end
      for _, m in ipairs(groups[name]) do
        if m:sub(1, 1) == "@" then expand(m, into) else into[m] = true end
      end
      return into
    end
    local allowed = {}
    for _, filter in ipairs(svc.SystemCallFilter or {}) do
      local deny = filter:sub(1, 1) == "~"
      for _, name in ipairs(words(deny and filter:sub(2) or filter)) do
        local set = name:sub(1, 1) == "@" and expand(name, {}) or { [name] = true }
        for call in pairs(set) do allowed[call] = not deny end
      end
    end
    assert(next(allowed), "no SystemCallFilter= in the unit")
    local made, outside = {}, {}
    for line in (read_file(trace) or ""):gmatch("[^\n]+") do
      local call = line:match("^%d+%s+([%w_]+)%(")
      if call and not made[call] then
        made[call] = true
        if not allowed[call] then outside[#outside + 1] = call end
      end
    end
    os.execute("rm -rf " .. q(dir))
    assert.is_true(made.epoll_wait or made.epoll_pwait or false, "strace saw no event loop")
    table.sort(outside)
    assert.are.same({}, outside, "system calls sluice made outside the unit's SystemCallFilter")
  end)
end)

-------------------------------------------------------------------------------
-- nginx

-- A main nginx.conf that includes the file under test, as Debian's does
-- conf.d/*.conf, run unprivileged in dir (paths, ports and the upstream
-- replaced so it runs on loopback).
local MAIN = [[
worker_processes 1;
master_process off;
daemon off;
error_log %s/error.log info;
pid %s/nginx.pid;
events { worker_connections 256; }
http {
  client_body_temp_path %s/client_body;
  proxy_temp_path %s/proxy;
  fastcgi_temp_path %s/fastcgi;
  uwsgi_temp_path %s/uwsgi;
  scgi_temp_path %s/scgi;
  include %s/sluice.conf;
  # the id nginx sent upstream, to compare with the one sluice saw
  log_format ids '$sluice_request_id';
  access_log %s/access.log ids;
}
]]

local function nginx_config(dir, upstream_port)
  local text = assert(read_file(DEPLOY .. "/nginx-sluice.conf"), "examples/deploy/nginx-sluice.conf is missing")
  local what = "nginx-sluice.conf"
  local http_port, tls_port = raw.free_port(), raw.free_port()
  text = replace_once(text, "server 127.0.0.1:8080;", "server 127.0.0.1:" .. upstream_port .. ";", what)
  text = replace_once(text, "listen 80;", "listen 127.0.0.1:" .. http_port .. ";", what)
  text = replace_once(text, "listen [::]:80;", "", what)
  text = replace_once(text, "listen 443 ssl http2;", "listen 127.0.0.1:" .. tls_port .. " ssl http2;", what)
  text = replace_once(text, "listen [::]:443 ssl http2;", "", what)
  text = replace_once(text, "/etc/ssl/sluice/fullchain.pem", dir .. "/cert.pem", what)
  text = replace_once(text, "/etc/ssl/sluice/privkey.pem", dir .. "/key.pem", what)
  write_file(dir .. "/sluice.conf", text)
  write_file(dir .. "/nginx.conf", MAIN:format(dir, dir, dir, dir, dir, dir, dir, dir, dir))
  return http_port, tls_port
end

local function self_signed(openssl, dir)
  local out, rc = run(("%s req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=events.example.com "
    .. "-keyout %s/key.pem -out %s/cert.pem"):format(q(openssl), q(dir), q(dir)))
  assert(rc == 0, "openssl could not make a certificate: " .. out)
end

describe("examples/deploy/nginx-sluice.conf", function()
  it("passes nginx -t", function()
    local nginx, openssl = tool(NGINX), tool("openssl")
    if not nginx or not openssl then
      pending(("nginx (%s) or openssl is not installed (packages nginx-light, openssl): not checked"):format(NGINX))
      return
    end
    local dir = server.tmpdir()
    self_signed(openssl, dir)
    nginx_config(dir, raw.free_port())
    local out, rc = run(("%s -t -p %s -c %s/nginx.conf"):format(q(nginx), q(dir), q(dir)))
    os.execute("rm -rf " .. q(dir))
    assert.is_true(rc == 0 and out:find("test is successful", 1, true) ~= nil, "nginx -t:\n" .. out)
    -- a warning (a duplicate header, an obsolete directive) is a fault too
    assert.is_nil(out:match("%[warn%][^\n]*"), "nginx -t warned:\n" .. out)
  end)

  it("sets what streams need", function()
    local text = assert(read_file(DEPLOY .. "/nginx-sluice.conf"))
    local d = {}   -- directive name -> { values }
    for line in text:gmatch("[^\n]+") do
      local code = line:match("^([^#]*)")
      local name, value = code:match("^%s*([%w_]+)%s+([^;]*);")
      if name then
        d[name] = d[name] or {}
        table.insert(d[name], value)
      end
    end
    local function has(name, value)
      for _, v in ipairs(d[name] or {}) do if v == value then return true end end
      return false
    end
    assert.is_true(has("proxy_http_version", "1.1"), "proxy_http_version 1.1")
    assert.is_true(has("proxy_set_header", 'Connection ""'), 'proxy_set_header Connection ""')
    assert.is_true(has("proxy_set_header", "X-Forwarded-For $proxy_add_x_forwarded_for"), "X-Forwarded-For")
    assert.is_true(has("proxy_set_header", "traceparent $http_traceparent"), "traceparent passed on")
    assert.is_true(has("listen", "443 ssl http2"), "TLS and HTTP/2 on 443")
    local keepalive = tonumber((d.keepalive or {})[1])
    assert.is_true(keepalive ~= nil and keepalive > 0, "no keepalive in the upstream")
    -- a stream is never silent longer than the heartbeat: the read timeout
    -- must be longer, or nginx cuts quiet streams
    local read = (d.proxy_read_timeout or {})[1]
    local secs = read and tonumber(read:match("^(%d+)s?$"))
    assert.is_true(secs ~= nil and secs > 15, "proxy_read_timeout above --heartbeat 15 s")
    -- buffering on relies on sluice's X-Accel-Buffering: no being honoured
    for _, v in ipairs(d.proxy_ignore_headers or {}) do
      assert.is_nil(v:find("X-Accel-Buffering", 1, true), "X-Accel-Buffering must not be ignored")
    end
  end)

  describe("run in front of sluice", function()
    local srv, dir, npid, http_port, tls_port
    local nginx, openssl, curl = tool(NGINX), tool("openssl"), tool("curl")
    local missing = not (nginx and openssl and curl)

    setup(function()
      if missing then return end
      srv = server.start { apps = { ["app.lua"] = STREAM_APP },
                           args = { "--no-watch", "--heartbeat", "30", "--retry", "2500" } }
      dir = server.tmpdir()
      self_signed(openssl, dir)
      http_port, tls_port = nginx_config(dir, srv.port)
      npid = tonumber(server.sh(("exec %s -p %s -c %s/nginx.conf >%s/stderr.log 2>&1 & echo $!")
        :format(q(nginx), q(dir), q(dir), q(dir))))
      assert(wait_port(tls_port, npid, 5), "nginx did not start:\n" .. (read_file(dir .. "/stderr.log") or "")
        .. (read_file(dir .. "/error.log") or ""))
    end)
    teardown(function()
      if npid and server.alive(npid) then
        os.execute(("kill -TERM %d 2>/dev/null"):format(npid))
        raw.eventually(function() return not server.alive(npid) end, 3)
        stop_pid(npid)
      end
      if dir then os.execute("rm -rf " .. q(dir)) end
      if srv then srv:stop() end
    end)

    local function curl_cmd(path, extra)
      return ("%s -sS -k --http2 --max-time 5 %s https://127.0.0.1:%d%s")
        :format(q(curl), extra or "", tls_port, path)
    end

    it("redirects plain HTTP to HTTPS", function()
      if missing then pending("nginx, openssl and curl are needed: not run"); return end
      local out = run(("%s -sS -o /dev/null -w '%%{http_code} %%{redirect_url}' http://127.0.0.1:%d/events")
        :format(q(curl), http_port))
      assert.matches("^301 https://", out)
    end)

    it("serves HTTP/2 over TLS and gives sluice the client's address and ids", function()
      if missing then pending("nginx, openssl and curl are needed: not run"); return end
      local trace = "0af7651916cd43dd8448eb211c80319c"
      local out, rc = run(curl_cmd("/seen", "-D " .. q(dir .. "/h.txt")
        .. " -H 'X-Request-ID: deploy-check-1' -H 'traceparent: 00-" .. trace .. "-b7ad6b7169203331-01'"
        .. " -w '\\n%{http_version}'"))
      assert.equal(0, rc, out)
      local body, version = out:match("^(.-)\n([%d%.]+)$")
      assert.equal("2", version)
      local seen = cjson.decode(body)
      assert.equal("deploy-check-1", seen.id)
      assert.equal(trace, seen.trace_id)
      assert.equal("127.0.0.1", seen.xff)
      assert.equal("https", seen.proto)
      -- sluice's id comes back once, not doubled by the proxy
      local head = read_file(dir .. "/h.txt") or ""
      local ids = 0
      for v in head:gmatch("\n[Xx]%-[Rr]equest%-[Ii][Dd]: ([^\r\n]+)") do
        ids = ids + 1
        assert.equal("deploy-check-1", v)
      end
      assert.equal(1, ids, head)
      -- without one from the client, nginx's own id reaches sluice
      local plain = cjson.decode((run(curl_cmd("/seen"))))
      local logged = raw.eventually(function()
        local log = read_file(dir .. "/access.log") or ""
        return log:match("(%x+)\n$")
      end, 3, 0.05)
      assert.equal(logged, plain.id)
    end)

    it("delivers a stream's events at once through the proxy", function()
      if missing then pending("nginx, openssl and curl are needed: not run"); return end
      local file = dir .. "/stream.txt"
      local cpid = tonumber(server.sh(("exec %s >%s 2>&1 & echo $!"):format(
        curl_cmd("/events", "-N -H 'Accept: text/event-stream'"), q(file))))
      local ok, err = pcall(function()
        local opened = raw.eventually(function()
          return (read_file(file) or ""):find("retry: 2500", 1, true) ~= nil
        end, 5, 0.05)
        assert.is_true(opened, "the stream did not open through nginx: " .. (read_file(file) or ""))
        local n = raw.eventually(function()
          local r = raw.exchange(srv.port, raw.request("POST", "/pub", nil, "through"))
          return r and r.body ~= "0" and r.body
        end, 3)
        assert.equal("1", n)
        -- the heartbeat is 30 s away: only immediate forwarding explains this
        local got = raw.eventually(function()
          return (read_file(file) or ""):find("data: through\n", 1, true) ~= nil
        end, 3, 0.05)
        assert.is_true(got, "the event was held by the proxy: " .. (read_file(file) or ""))
      end)
      stop_pid(cpid)
      if not ok then error(err, 0) end
    end)
  end)
end)

-------------------------------------------------------------------------------
-- Kubernetes

-- The manifest's documents, through python3-yaml into JSON; nil and why
-- when no YAML parser is available.
local function load_manifest()
  local py = tool("python3")
  if not py then return nil, "python3 is not installed" end
  local _, rc = run(q(py) .. " -c 'import yaml'")
  if rc ~= 0 then return nil, "python3 has no yaml module (package python3-yaml)" end
  local out, rc2 = run(q(py) .. [[ -c 'import sys, json, yaml
json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)' ]] .. q(DEPLOY .. "/kubernetes.yaml"))
  assert(rc2 == 0, "kubernetes.yaml is not valid YAML:\n" .. out)
  return cjson.decode(out)
end

describe("examples/deploy/kubernetes.yaml", function()
  local docs, why, by_kind, pod, ctr, args, opts

  setup(function()
    docs, why = load_manifest()
    if not docs then return end
    by_kind = {}
    for _, d in ipairs(docs) do
      assert(d ~= cjson.null and d.kind, "a document without a kind")
      assert(not by_kind[d.kind], "two " .. d.kind .. "s")
      by_kind[d.kind] = d
    end
    assert(by_kind.Deployment, "no Deployment")
    pod = by_kind.Deployment.spec.template.spec
    assert.equal(1, #pod.containers, "one container expected")
    ctr = pod.containers[1]
    args = ctr.args
    opts = options_of(args)
  end)

  local function needs_yaml()
    if not docs then pending(why .. ": the manifest was not checked"); return true end
  end

  local function container_port(ref)
    if type(ref) == "number" then return ref end
    for _, p in ipairs(ctr.ports or {}) do
      if p.name == ref then return p.containerPort end
    end
    error("no container port named " .. tostring(ref))
  end

  it("holds a ConfigMap, a Deployment and a Service that selects its pods", function()
    if needs_yaml() then return end
    assert(by_kind.ConfigMap and by_kind.Service, "expected a ConfigMap and a Service")
    local labels = by_kind.Deployment.spec.template.metadata.labels
    for k, v in pairs(by_kind.Deployment.spec.selector.matchLabels) do assert.equal(v, labels[k]) end
    for k, v in pairs(by_kind.Service.spec.selector) do assert.equal(v, labels[k]) end
    local sp = by_kind.Service.spec.ports
    assert.equal(1, #sp, "the Service exposes the public port only")
    assert.equal(port_of(opts["--listen"]), container_port(sp[1].targetPort))
  end)

  it("probes the admin port: /healthz for liveness, /readyz for readiness", function()
    if needs_yaml() then return end
    local admin = port_of(assert(opts["--admin-listen"], "no --admin-listen in the container's args"))
    assert.are_not.equal(port_of(opts["--listen"]), admin)
    assert.equal("/healthz", ctr.livenessProbe.httpGet.path)
    assert.equal(admin, container_port(ctr.livenessProbe.httpGet.port))
    assert.equal("/readyz", ctr.readinessProbe.httpGet.path)
    assert.equal(admin, container_port(ctr.readinessProbe.httpGet.port))
    if ctr.startupProbe then
      assert.equal(admin, container_port(ctr.startupProbe.httpGet.port))
    end
    local ann = by_kind.Deployment.spec.template.metadata.annotations or {}
    if ann["prometheus.io/port"] then assert.equal(tostring(admin), ann["prometheus.io/port"]) end
  end)

  it("drains before SIGTERM and gives sluice its whole grace period", function()
    if needs_yaml() then return end
    local pre = assert(ctr.lifecycle and ctr.lifecycle.preStop, "no preStop hook")
    local wait
    if pre.sleep then
      wait = pre.sleep.seconds
    else
      local cmd = pre.exec and pre.exec.command or {}
      wait = tonumber(cmd[#cmd])
      assert.matches("sleep$", tostring(cmd[1]))
    end
    assert.is_true(type(wait) == "number" and wait >= 1, "the preStop hook does not wait")
    local grace = tonumber(opts["--shutdown-grace"] or 5)
    assert.is_true(pod.terminationGracePeriodSeconds > wait + grace + EXIT_MARGIN,
      ("terminationGracePeriodSeconds %s is not above preStop %s s + --shutdown-grace %s + %d s")
        :format(pod.terminationGracePeriodSeconds, wait, grace, EXIT_MARGIN))
    local roll = by_kind.Deployment.spec.strategy.rollingUpdate
    assert.equal(0, roll.maxUnavailable)
  end)

  it("runs unprivileged on a read-only root", function()
    if needs_yaml() then return end
    local sc, psc = ctr.securityContext or {}, pod.securityContext or {}
    assert.is_true(sc.runAsNonRoot or psc.runAsNonRoot or false, "runAsNonRoot")
    assert.is_true(sc.readOnlyRootFilesystem, "readOnlyRootFilesystem")
    assert.is_false(sc.allowPrivilegeEscalation, "allowPrivilegeEscalation")
    assert.are.same({ "ALL" }, sc.capabilities.drop)
    assert(ctr.resources and ctr.resources.limits and ctr.resources.limits.memory, "no memory limit")
    assert(ctr.resources.requests and ctr.resources.requests.cpu, "no CPU request")
  end)

  it("mounts the ConfigMap as the apps directory, whose scripts load", function()
    if needs_yaml() then return end
    local vol
    for _, v in ipairs(pod.volumes) do
      if v.configMap and v.configMap.name == by_kind.ConfigMap.metadata.name then vol = v end
    end
    assert(vol, "no volume from the ConfigMap")
    local mount
    for _, m in ipairs(ctr.volumeMounts) do if m.name == vol.name then mount = m end end
    assert(mount, "the ConfigMap's volume is not mounted")
    assert.equal(opts["--apps"], mount.mountPath)
    -- a subPath mount never receives the ConfigMap's updates
    assert.is_nil(mount.subPath)
    local dir = server.tmpdir()
    os.execute("mkdir -p " .. q(dir .. "/apps"))
    local n = 0
    for name, src in pairs(by_kind.ConfigMap.data) do
      assert.matches("%.lua$", name)
      write_file(dir .. "/apps/" .. name, src)
      n = n + 1
    end
    local out, rc = run(("%s --check %s --lua-path %s"):format(q(BIN), q(dir .. "/apps"), q(ROOT .. "/lua")))
    os.execute("rm -rf " .. q(dir))
    assert.is_true(n > 0, "the ConfigMap holds no script")
    assert.equal(0, rc, "sluice --check on the ConfigMap's scripts:\n" .. out)
  end)

  -- The container's arguments, run: the probes' paths answer on the admin
  -- port (needs --admin-listen in this build).
  it("answers the probes with the container's arguments", function()
    if needs_yaml() then return end
    local waiting = unknown_options(args)
    if #waiting > 0 then
      pending("not in this build's sluice --help yet: " .. table.concat(waiting, " ")
        .. ": the probes were not run")
      return
    end
    -- the kit gives --listen (a free port), --apps and --lua-path
    local admin = raw.free_port()
    local drop = { ["--listen"] = true, ["--apps"] = true, ["--lua-path"] = true }
    local a, i = {}, 1
    while i <= #args do
      local o, v = args[i], args[i + 1]
      local has_value = v ~= nil and v:sub(1, 2) ~= "--"
      if not drop[o] then
        a[#a + 1] = o
        if has_value then a[#a + 1] = o == "--admin-listen" and ("127.0.0.1:" .. admin) or v end
      end
      i = i + (has_value and 2 or 1)
    end
    local srv = server.start { apps = by_kind.ConfigMap.data, args = a }
    local ok, err = pcall(function()
      assert.is_true(wait_port(admin, nil, 5), "nothing listens on the admin port")
      for _, p in ipairs({ ctr.livenessProbe, ctr.readinessProbe }) do
        local r = raw.exchange(admin, raw.request("GET", p.httpGet.path, { { "Connection", "close" } }))
        assert(r, "no answer on " .. p.httpGet.path)
        assert.is_true(r.status >= 200 and r.status < 400, p.httpGet.path .. " answered " .. r.status)
      end
    end)
    srv:stop()
    if not ok then error(err, 0) end
  end)
end)
