# sluice: make deps | make | make run | make test | make bench | make asan | make tsan
CC      ?= cc
CFLAGS  ?= -O2 -g
override CFLAGS += -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE
LDFLAGS ?=
LUAJIT_CFLAGS := $(shell pkg-config --cflags luajit 2>/dev/null || echo -I/usr/include/luajit-2.1)
LUAJIT_LIBS   := $(shell pkg-config --libs luajit 2>/dev/null || echo -lluajit-5.1)
LLHTTP_SRC    := /usr/share/llhttp
LLHTTP_INC    := /usr/share/include/llhttp
BUILD   ?= build
LISTEN  ?= 127.0.0.1:8080
APPS    ?= apps

# Every Debian package that building, running and testing needs.
PACKAGES := gcc make pkg-config libluajit2-5.1-dev luajit2 libev-dev node-llhttp \
            uthash-dev libssl-dev openssl lua-busted lua-cjson lua-socket nginx nginx-light curl \
            prometheus redis-server libhiredis-dev python3-yaml strace systemd

CORE_SRC := $(wildcard core/*.c)
CORE_OBJ := $(CORE_SRC:core/%.c=$(BUILD)/core/%.o)
LLHTTP_OBJ := $(BUILD)/llhttp/llhttp.o $(BUILD)/llhttp/api.o $(BUILD)/llhttp/http.o

.PHONY: all deps run test check asan tsan bench fuzz browser-test clean

all: sluice

deps:
	@missing=$$(for p in $(PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

sluice: $(CORE_OBJ) $(LLHTTP_OBJ)
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LUAJIT_LIBS) -lhiredis -lev -lm -lrt -pthread -Wl,-E

$(BUILD)/core/%.o: core/%.c $(wildcard core/*.h) | $(BUILD)/core
	$(CC) $(CFLAGS) $(LUAJIT_CFLAGS) -I$(LLHTTP_INC) -c -o $@ $<

# llhttp is generated C from Debian's node-llhttp: built without our
# warning flags, which are for code we write, and in strict mode, which
# refuses a chunk not ended by CRLF and other framing that a proxy in front
# may read differently (request smuggling). Only llhttp.c reads the macro;
# the Makefile is a prerequisite so a build from before is not kept lenient.
$(BUILD)/llhttp/%.o: $(LLHTTP_SRC)/%.c Makefile | $(BUILD)/llhttp
	$(CC) -O2 -g -fPIC -DLLHTTP_STRICT_MODE=1 -I$(LLHTTP_INC) -c -o $@ $<

$(BUILD)/core $(BUILD)/llhttp:
	mkdir -p $@

run: deps
	$(MAKE) sluice
	./sluice --listen $(LISTEN) --apps $(APPS)

test: deps
	$(MAKE) sluice
	$(MAKE) testcore
	$(MAKE) ctest
	./spec/run

# C unit tests, one binary per seam: channel.c against a recording fake
# stream (linked in place of stream.c, so the server's hot path keeps its
# direct calls), and stream.c between real channels and a fake transport.
# The last line sums them up as "ctest: N passed, N failed".
CTEST_LIB := core/bus.c core/frame.c core/sse.c core/buf.c core/log.c
CTESTS := $(BUILD)/tests/channel_test $(BUILD)/tests/stream_test

.PHONY: ctest
ctest: $(CTESTS)
	@pass=0; fail=0; for t in $(CTESTS); do \
	  $$t > $$t.out 2>&1; rc=$$?; cat $$t.out; \
	  line=$$(grep -E '^[a-z_]+: [0-9]+ passed, [0-9]+ failed$$' $$t.out | tail -n 1); \
	  if [ -z "$$line" ]; then echo "$$t: exit $$rc, no summary"; fail=$$((fail + 1)); continue; fi; \
	  pass=$$((pass + $$(echo "$$line" | awk '{print $$2}'))); \
	  fail=$$((fail + $$(echo "$$line" | awk '{print $$4}'))); \
	  [ $$rc -eq 0 ] || [ $$(echo "$$line" | awk '{print $$4}') -gt 0 ] || fail=$$((fail + 1)); \
	done; \
	echo "ctest: $$pass passed, $$fail failed"; [ $$fail -eq 0 ]

$(BUILD)/tests/channel_test: tests/c/channel_test.c tests/c/fake_stream.c core/channel.c $(CTEST_LIB) \
                             $(wildcard core/*.h tests/c/*.h) | $(BUILD)/tests
	$(CC) $(CFLAGS) -Icore -o $@ $(filter %.c,$^) $(LDFLAGS) -lev -lm

$(BUILD)/tests/stream_test: tests/c/stream_test.c core/stream.c core/outbuf.c core/heartbeat.c core/channel.c $(CTEST_LIB) \
                            $(wildcard core/*.h tests/c/*.h) | $(BUILD)/tests
	$(CC) $(CFLAGS) -Icore -o $@ $(filter %.c,$^) $(LDFLAGS) -lev -lm

$(BUILD)/tests:
	mkdir -p $@

# The core of the test kit's in-process mode (testing.app in
# lua/sluice/testing): the server's own sources, all but main.c and the
# loop-driven timers, built position-independent into a Lua C module
# with a harness that drives a worker by hand (tests/testcore/testcore.c).
# busted's LuaJIT loads it; the Lua API symbols come from that process.
TESTCORE_SRC := $(filter-out core/main.c core/lua_api_timers.c,$(CORE_SRC)) tests/testcore/testcore.c
TESTCORE_OBJ := $(TESTCORE_SRC:%.c=$(BUILD)/testing/%.o)
TESTCORE := $(BUILD)/testing/sluice_testcore.so

.PHONY: testcore
testcore: $(TESTCORE)

$(TESTCORE): $(TESTCORE_OBJ) $(LLHTTP_OBJ)
	$(CC) $(CFLAGS) -shared -o $@ $^ $(LDFLAGS) -lhiredis -lev -lm -lrt -pthread

$(BUILD)/testing/%.o: %.c $(wildcard core/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fPIC $(LUAJIT_CFLAGS) -I$(LLHTTP_INC) -Icore -c -o $@ $<

check: sluice
	./sluice --check $(APPS)

# The specs against a build with AddressSanitizer and UBSan. spec/run
# collects every sanitizer report (log_path), fails the spec whose server
# reported and exits non-zero; spec/asan.supp names the only leaks allowed.
asan: deps
	$(MAKE) BUILD=build-asan CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer" \
	        LDFLAGS="-fsanitize=address,undefined" sluice-asan
	SLUICE_BIN=./sluice-asan ./spec/run

sluice-asan: $(CORE_OBJ) $(LLHTTP_OBJ)
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LUAJIT_LIBS) -lhiredis -lev -lm -lrt -pthread -Wl,-E

# The specs against a ThreadSanitizer build (the process, signal and
# worker threads). spec/run sets no log_path for TSan, so its reports go to
# a directory of their own; spec/run fails a spec whose server log has a
# report, and the check after it fails the run for any report at all.
# spec/tsan.supp names what is allowed. TSAN_SPECS: busted arguments. Left
# out by default: a script stopped by its CPU budget, because TSan holds a
# timer's signal until the thread enters instrumented code, which a script
# spinning in LuaJIT never does (the budget never fires under TSan); and two
# bounds TSan's own cost breaks (a 30 ms budget, an RSS bound).
TSAN_SPECS ?= --exclude-pattern=isolation_spec --filter-out=CPU.budget \
              --filter-out=never.returns --filter-out=stops.a.loop \
              --filter-out=big.publish --filter-out=memory.within
tsan: deps
	$(MAKE) BUILD=build-tsan CFLAGS="-O1 -g -fsanitize=thread -fno-omit-frame-pointer" \
	        LDFLAGS="-fsanitize=thread" sluice-tsan
	@dir=$$(mktemp -d /tmp/sluice-tsan.XXXXXX); \
	  SLUICE_BIN=./sluice-tsan \
	  TSAN_OPTIONS="halt_on_error=0:exitcode=86:second_deadlock_stack=1:suppressions=$$PWD/spec/tsan.supp:$${TSAN_OPTIONS:+$$TSAN_OPTIONS:}log_path=$$dir/tsan" \
	  ./spec/run $(TSAN_SPECS); rc=$$?; \
	  sleep 0.5; luajit spec/helpers/sanitizer.lua "$$dir" || rc=1; \
	  [ $$rc -ne 0 ] || rm -rf "$$dir"; exit $$rc

sluice-tsan: $(CORE_OBJ) $(LLHTTP_OBJ)
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LUAJIT_LIBS) -lhiredis -lev -lm -lrt -pthread -Wl,-E

bench: deps
	$(MAKE) sluice
	bench/run all

# libFuzzer targets for the event framing and the request parser (clang).
FUZZ_FLAGS := -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -D_GNU_SOURCE -Icore
FUZZ_SECONDS ?= 60
fuzz:
	@command -v clang >/dev/null && [ -n "$$(ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a 2>/dev/null)" ] || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang libclang-rt-14-dev; }
	mkdir -p build/fuzz fuzz/corpus/sse fuzz/corpus/http
	clang $(FUZZ_FLAGS) fuzz/fuzz_sse.c core/sse.c -o build/fuzz/fuzz_sse
	clang $(FUZZ_FLAGS) -DLLHTTP_STRICT_MODE=1 -I$(LLHTTP_INC) fuzz/fuzz_http.c core/http.c \
	      $(LLHTTP_SRC)/llhttp.c $(LLHTTP_SRC)/api.c $(LLHTTP_SRC)/http.c -o build/fuzz/fuzz_http
	build/fuzz/fuzz_sse -max_total_time=$(FUZZ_SECONDS) -max_len=512 fuzz/corpus/sse
	build/fuzz/fuzz_http -max_total_time=$(FUZZ_SECONDS) -max_len=4096 fuzz/corpus/http fuzz/seeds/http

# A real browser (Debian's chromium, driven by playwright-core from npm)
# against the real server. Heavy, so not part of make test.
browser-test: deps sluice
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	@[ -d build/browser/node_modules/playwright-core ] || \
	  { mkdir -p build/browser && cd build/browser && npm install --silent --no-audit --no-fund playwright-core@1; }
	@./sluice --listen 127.0.0.1:0 --apps spec/browser/apps --no-watch > build/browser/sluice.log 2>&1 & \
	  pid=$$!; port=; for i in $$(seq 100); do \
	    port=$$(grep -o 'listening on 127.0.0.1:[0-9]*' build/browser/sluice.log | cut -d: -f2); \
	    [ -n "$$port" ] && break; sleep 0.05; done; \
	  NODE_PATH=build/browser/node_modules node spec/browser/eventsource.js http://127.0.0.1:$$port/; \
	  rc=$$?; kill $$pid; [ $$rc = 0 ] || exit $$rc
	@# The admin listener's /status page (its own server: other ids in the sequence).
	@./sluice --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --apps spec/browser/status_apps \
	    --no-watch > build/browser/status.log 2>&1 & \
	  pid=$$!; port=; for i in $$(seq 100); do \
	    port=$$(grep -o 'listening on 127.0.0.1:[0-9]*' build/browser/status.log | cut -d: -f2); \
	    [ -n "$$port" ] && break; sleep 0.05; done; \
	  admin=$$(grep -o 'admin endpoints at 127.0.0.1:[0-9]*' build/browser/status.log | cut -d: -f2); \
	  NODE_PATH=build/browser/node_modules node spec/browser/status.js http://127.0.0.1:$$admin \
	    http://127.0.0.1:$$port $$pid; \
	  rc=$$?; kill $$pid; exit $$rc

clean:
	rm -rf build build-asan build-tsan sluice sluice-asan sluice-tsan
