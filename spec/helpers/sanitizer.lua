-- Finds AddressSanitizer, LeakSanitizer, UBSan and ThreadSanitizer reports
-- of servers the specs ran, so that `make asan` and `make tsan` fail when
-- the server reports anything.
--
-- Reports reach us two ways:
--   * spec/run points the sanitizers' log_path into a directory
--     ($SLUICE_SANITIZER_DIR): every sanitized process, however a spec
--     started it, writes its report to <dir>/asan.<pid> or ubsan.<pid>;
--   * without spec/run (busted alone) they go to the server's stderr, that
--     is its log file.
-- server.lua checks both when a server stops and raises in that spec; spec/run
-- checks the directory once more at the end (servers a spec started by
-- itself) and exits non-zero.
--
-- Also a script: `luajit spec/helpers/sanitizer.lua DIR` prints every report
-- in DIR and exits 1 if there is one, 0 if none.
local sanitizer = {}

-- What only a sanitizer writes. Plain substrings, searched without patterns.
sanitizer.MARKERS = {
  "ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "WARNING: AddressSanitizer",
  "WARNING: ThreadSanitizer", "FATAL: ThreadSanitizer", "runtime error:", "SUMMARY: ",
}

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- The first marker found in text, or nil.
function sanitizer.marker(text)
  if not text then return nil end
  for _, m in ipairs(sanitizer.MARKERS) do
    if text:find(m, 1, true) then return m end
  end
  return nil
end

-- From the first marker to the end (capped), for a readable failure.
function sanitizer.excerpt(text, max)
  max = max or 6000
  local first
  for _, m in ipairs(sanitizer.MARKERS) do
    local at = text:find(m, 1, true)
    if at and (not first or at < first) then first = at end
  end
  if not first then return nil end
  -- Back to the start of that line.
  local line_start = first
  while line_start > 1 and text:byte(line_start - 1) ~= 10 do line_start = line_start - 1 end
  local s = text:sub(line_start)
  if #s > max then s = s:sub(1, max) .. "\n[... report cut; see the file]" end
  return s
end

function sanitizer.dir()
  local d = os.getenv("SLUICE_SANITIZER_DIR")
  if d and d ~= "" then return d end
  return nil
end

-- Files in dir (names only, sorted), without a shell per name.
local function list(dir)
  local p = io.popen(("ls -1 '%s' 2>/dev/null"):format(dir:gsub("'", "")))
  if not p then return {} end
  local names = {}
  for name in p:lines() do names[#names + 1] = name end
  p:close()
  table.sort(names)
  return names
end

-- Report files of one process in the sanitizer directory: paths.
function sanitizer.files_of(pid, dir)
  dir = dir or sanitizer.dir()
  if not dir or not pid then return {} end
  local out = {}
  for _, name in ipairs(list(dir)) do
    -- log_path=<dir>/asan writes <dir>/asan.<pid>
    if name:match("%.(%d+)$") == tostring(pid) then out[#out + 1] = dir .. "/" .. name end
  end
  return out
end

-- Every report in dir: { { path =, text = } ... } (empty files are not
-- reports: a sanitizer creates its file only to write a report).
function sanitizer.reports_in(dir)
  local out = {}
  for _, name in ipairs(list(dir)) do
    local path = dir .. "/" .. name
    local text = read(path)
    if text and #text > 0 then out[#out + 1] = { path = path, text = text } end
  end
  return out
end

-- Whether a stopped server (pid, log text, log path) reported anything:
-- nil, or a message naming where the report is kept, with the report.
function sanitizer.check_server(pid, log_text, log_path)
  local parts = {}
  local m = sanitizer.marker(log_text)
  if m then
    parts[#parts + 1] = ("sanitizer report in the server log %s (kept):\n%s")
      :format(tostring(log_path), sanitizer.excerpt(log_text))
  end
  for _, path in ipairs(sanitizer.files_of(pid)) do
    local text = read(path) or ""
    if #text > 0 then
      parts[#parts + 1] = ("sanitizer report of server %s in %s:\n%s")
        :format(tostring(pid), path, sanitizer.excerpt(text) or text)
    end
  end
  if #parts == 0 then return nil end
  return table.concat(parts, "\n")
end

-- As a script: check a directory.
local function main(dir)
  if not dir then
    io.stderr:write("usage: luajit spec/helpers/sanitizer.lua DIR\n")
    return 2
  end
  local reports = sanitizer.reports_in(dir)
  for _, r in ipairs(reports) do
    io.stdout:write(("---- sanitizer report %s\n%s\n"):format(r.path, sanitizer.excerpt(r.text) or r.text))
  end
  if #reports > 0 then
    io.stdout:write(("spec: %d sanitizer report(s), kept in %s\n"):format(#reports, dir))
    return 1
  end
  return 0
end

if arg and arg[0] and arg[0]:match("sanitizer%.lua$") then os.exit(main(arg[1])) end

return sanitizer
