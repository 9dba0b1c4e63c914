# The two entry points (README): `make run` and `make test`. Both install what they need.
PRESET ?= release
BUILD_DIR := build/$(PRESET)
MODEL ?= models/default
ADDRESS ?= 127.0.0.1:50051
ARGS ?=

.PHONY: all deps configure build run test clean

all: build

deps:
	@bash tools/install_deps.sh

configure: deps
	cmake --preset $(PRESET)

build: configure
	cmake --build --preset $(PRESET)

# Until the trained default model lands (issue 7), models/default is a small random-weight
# checkpoint written by the project's own generator on first use.
$(MODEL)/config.json: | build
	$(BUILD_DIR)/tools/squat-make-checkpoint --preset tiny --seed 1 --out $(MODEL)

run: build $(MODEL)/config.json
	$(BUILD_DIR)/server/squat-server --model $(MODEL) --address $(ADDRESS) $(ARGS)

test: build
	ctest --preset $(PRESET) -j2

clean:
	rm -rf build
