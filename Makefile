# The two entry points (README): `make run` and `make test`. Both install what they need.
PRESET ?= release
BUILD_DIR := build/$(PRESET)
MODEL ?= models/tiny-english
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

# models/tiny-english is the small English model trained by tools/train_tiny (its README.md is
# the model card); MODEL=DIR serves any other Hugging Face checkpoint directory.
run: build
	@test -f $(MODEL)/config.json || { echo "$(MODEL)/config.json not found: MODEL must be a Hugging Face checkpoint directory" >&2; exit 1; }
	$(BUILD_DIR)/server/squat-server --model $(MODEL) --address $(ADDRESS) $(ARGS)

test: build
	ctest --preset $(PRESET) -j2

clean:
	rm -rf build
