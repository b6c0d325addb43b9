"""Offline stand-in for rules_java: Bazel 4.2's @bazel_tools//tools/jdk loads it while
registering its toolchains, even for C++-only builds. Re-exports the native rules."""

java_binary = native.java_binary
java_import = native.java_import
java_library = native.java_library
java_plugin = native.java_plugin
java_runtime = native.java_runtime
java_test = native.java_test
java_toolchain = native.java_toolchain
