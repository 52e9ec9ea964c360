package org.tfdpu.patch;

import java.io.DataInputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The command line, with the Python applier's flag names:
 *
 * <pre>
 * java -jar dpu-patch.jar apply --base=A --patch=P [--out=B] [--public_key=K] [--state=S]
 *     [--no_state] [--initial_round=N] [--whole_file=signed|always|never] [--allow_unsigned]
 *     [--now=T] [--max_round_jump=J] [--max_patch_bytes=B]
 * java -jar dpu-patch.jar check_key --public_key=K
 * java -jar dpu-patch.jar batch FILE...     (the differential fuzzing driver's input)
 * java -jar dpu-patch.jar bench --base=A --patch=P --repeats=N   (seconds and peak heap)
 * </pre>
 *
 * Exit status 0 on success, 2 on any refusal or bad command line, with one
 * line on stderr. Boolean flags follow absl's grammar exactly, as the Python
 * command line does: {@code --flag}, {@code --noflag}, {@code --flag=true|t|1}
 * or {@code --flag=false|f|0} (any case); numbers are decimal and in range.
 */
public final class Main {
  private Main() {}

  public static void main(String[] args) {
    int status;
    try {
      status = run(args);
    } catch (PatchException e) {
      System.err.println("error: " + e.getMessage());
      status = 2;
    }
    System.exit(status);
  }

  static int run(String[] args) throws PatchException {
    if (args.length == 0) {
      throw usage("give a command: apply, check_key, batch");
    }
    String command = args[0];
    if (command.equals("batch")) {
      return batch(java.util.Arrays.copyOfRange(args, 1, args.length));
    }
    Map<String, String> flags = flags(args);
    if (command.equals("check_key")) {
      allow(flags, command, "public_key");
      PatchKey.load(Paths.get(need(flags, command, "public_key")));
      System.out.println("the public key is a valid Ed25519 point of large order");
      return 0;
    }
    if (command.equals("bench")) {
      allow(flags, command, "base", "patch", "repeats");
      return bench(Paths.get(need(flags, command, "base")),
          Paths.get(need(flags, command, "patch")), Integer.parseInt(need(flags, command,
          "repeats")));
    }
    if (!command.equals("apply")) {
      throw usage("unknown command '" + command + "': use one of apply, check_key, batch, "
          + "bench");
    }
    allow(flags, command, "base", "patch", "out", "public_key", "state", "no_state",
        "initial_round", "whole_file", "allow_unsigned", "now", "max_round_jump",
        "max_patch_bytes");
    Path base = Paths.get(need(flags, command, "base"));
    Path patch = Paths.get(need(flags, command, "patch"));
    Path out = flags.containsKey("out") ? Paths.get(flags.get("out")) : null;
    PatchApplier.Options options = new PatchApplier.Options();
    if (flags.containsKey("public_key")) {
      if (flags.get("public_key").isEmpty()) {
        throw new PatchException(PatchException.Reason.KEY, "the public key path is empty (an "
            + "unset variable?); refusing to apply without the key");
      }
      options.publicKey(PatchKey.load(Paths.get(flags.get("public_key"))));
    }
    options.allowUnsigned(bool(flags, "allow_unsigned"));
    if (flags.containsKey("now")) {
      options.now(number(flags, "now", Long.MAX_VALUE, 0));
    }
    if (flags.containsKey("max_round_jump")) {
      options.maxRoundJump(number(flags, "max_round_jump", 0xffffffffL, 1));
    }
    if (flags.containsKey("max_patch_bytes")) {
      options.maxPatchBytes(number(flags, "max_patch_bytes", Long.MAX_VALUE, 1));
    }
    boolean noState = bool(flags, "no_state");
    if (noState && (flags.containsKey("state") || flags.containsKey("initial_round"))) {
      throw usage("--no_state excludes --state and --initial_round");
    }
    if (!noState) {
      options.state(Paths.get(flags.containsKey("state") ? flags.get("state")
          : (out != null ? out : base).toString() + ".state"));
    }
    if (flags.containsKey("initial_round")) {
      options.initialRound(number(flags, "initial_round", 0xffffffffL, 0));
    }
    if (flags.containsKey("whole_file")) {
      String policy = flags.get("whole_file");
      if (!policy.matches("signed|always|never")) {
        throw usage("--whole_file must be one of signed, always, never, got " + policy);
      }
      options.wholeFile(PatchApplier.WholeFile.valueOf(policy.toUpperCase(java.util.Locale.ROOT)));
    }
    Header header = PatchApplier.apply(base, patch, out, options);
    System.out.println("wrote " + (out != null ? out : base) + ": "
        + Long.toUnsignedString(header.resultSize) + " bytes, "
        + (header.verified() ? "verified (key id " + Format.hex(header.keyId, 8) + ")"
            : "UNSIGNED: no signature was checked") + ", round " + header.round);
    return 0;
  }

  private static final java.util.List<String> BOOLEANS =
      java.util.Arrays.asList("no_state", "allow_unsigned");

  /** A boolean flag's value: absent is false; the parser has checked its spelling. */
  private static boolean bool(Map<String, String> flags, String name) {
    return "true".equals(flags.get(name));
  }

  /** A decimal integer in [min, max], as absl's integer flags with bounds. */
  private static long number(Map<String, String> flags, String name, long max, long min)
      throws PatchException {
    String text = flags.get(name);
    if (!text.matches("[0-9]{1,19}")) {
      throw usage("flag --" + name + "=" + text + ": must be a decimal integer");
    }
    long value;
    try {
      value = Long.parseLong(text);
    } catch (NumberFormatException e) {
      value = -1;
    }
    if (value < min || value > max) {
      throw usage("flag --" + name + "=" + text + ": must be in [" + min + ", " + max + "]");
    }
    return value;
  }

  private static PatchException usage(String message) {
    return new PatchException(PatchException.Reason.FORMAT, message);
  }

  /**
   * --name=value or --name value; booleans as absl reads them: --flag,
   * --noflag, --flag=true|t|1|false|f|0 (any case), stored as "true"/"false".
   */
  private static Map<String, String> flags(String[] args) throws PatchException {
    Map<String, String> out = new LinkedHashMap<String, String>();
    for (int i = 1; i < args.length; i++) {
      String arg = args[i];
      if (!arg.startsWith("--")) {
        throw usage("unexpected argument(s): " + arg + " (flags start with --)");
      }
      int equals = arg.indexOf('=');
      String name = equals < 0 ? arg.substring(2) : arg.substring(2, equals);
      String value;
      if (BOOLEANS.contains(name)) {
        String given = equals < 0 ? "true" : arg.substring(equals + 1).toLowerCase(
            java.util.Locale.ROOT);
        if (given.matches("true|t|1")) {
          value = "true";
        } else if (given.matches("false|f|0")) {
          value = "false";
        } else {
          throw usage("flag --" + name + "=" + arg.substring(equals + 1) + ": Non-boolean "
              + "argument to boolean flag");
        }
      } else if (name.startsWith("no") && BOOLEANS.contains(name.substring(2))) {
        if (equals >= 0) {
          throw usage(arg + " does not take an argument");
        }
        name = name.substring(2);
        value = "false";
      } else if (equals >= 0) {
        value = arg.substring(equals + 1);
      } else if (i + 1 < args.length) {
        value = args[++i];
      } else {
        throw usage("--" + name + " needs a value");
      }
      if (out.put(name, value) != null) {
        throw usage("--" + name + " is given twice");
      }
    }
    return out;
  }

  private static void allow(Map<String, String> flags, String command, String... names)
      throws PatchException {
    for (String name : flags.keySet()) {
      if (!java.util.Arrays.asList(names).contains(name)) {
        throw usage(command + " does not take --" + name);
      }
    }
  }

  private static String need(Map<String, String> flags, String command, String name)
      throws PatchException {
    String value = flags.get(name);
    if (value == null) {
      throw usage(command + " needs --" + name);
    }
    return value;
  }

  /**
   * Runs the patches of batch files (see tflite_edge/c/fuzz/batch.c for the
   * format) and compares every outcome with the Python applier's verdict:
   * 0 accepted, 1 written but refused at the result hash, 2 refused.
   */
  static int batch(String[] files) throws PatchException {
    String[] names = {"accepted", "refused at the result hash", "refused"};
    long[] counts = new long[3];
    for (String file : files) {
      try (InputStream raw = Files.newInputStream(Paths.get(file));
           DataInputStream in = new DataInputStream(new java.io.BufferedInputStream(raw))) {
        byte[] magic = new byte[4];
        in.readFully(magic);
        if (!new String(magic, "US-ASCII").equals("DPUC")) {
          throw usage(file + " is not a batch file");
        }
        byte[] base = new byte[readU32(in)];
        in.readFully(base);
        boolean keyed = in.readUnsignedByte() != 0;
        byte[] key = new byte[32];
        in.readFully(key);
        int options = in.readUnsignedByte();
        long round = readU32(in) & 0xffffffffL;
        long releaseTime = readU64(in);
        long now = readU64(in);
        PatchApplier.Options settings = new PatchApplier.Options();
        if (keyed) {
          settings.publicKey(PatchKey.of(key));
        }
        settings.wholeFile((options & 1) != 0 ? PatchApplier.WholeFile.ALWAYS
            : PatchApplier.WholeFile.NEVER);
        settings.allowUnsigned((options & 2) != 0).now(now);
        ModelBytes model = ModelBytes.of(base);
        byte[] digest = PatchApplier.sha256(model);
        DeviceState.Entry state = new DeviceState.Entry(round, digest, releaseTime,
            keyed ? key : null, new java.util.ArrayList<byte[]>());
        int count = readU32(in);
        for (int i = 0; i < count; i++) {
          byte[] patch = new byte[readU32(in)];
          int expected = in.readUnsignedByte();
          in.readFully(patch);
          readU32Unsigned(in);                  // the C applier's changing storage: the
          in.readFully(new byte[readU32(in)]);  // JVM reads a patch once, so only the first counts
          int got;
          try {
            PatchApplier.apply(model, () -> digest, patch, settings, state, (data, length) -> { });
            got = 0;
          } catch (PatchException e) {
            got = e.reason() == PatchException.Reason.RESULT ? 1 : 2;
            if (got != expected) {
              System.err.println("(" + e.getMessage() + ")");
            }
          }
          if (got != expected) {
            System.err.println("disagreement at entry " + i + " of " + file + ": the Python "
                + "applier " + names[expected] + " it, the JVM applier " + names[got] + " it");
            return 3;
          }
          counts[got]++;
        }
      } catch (EOFException e) {
        throw usage(file + " is truncated");
      } catch (IOException e) {
        throw usage("cannot read " + file + ": " + e.getMessage());
      }
    }
    System.out.println((counts[0] + counts[1] + counts[2]) + " inputs: " + counts[0]
        + " accepted, " + counts[1] + " refused at the result hash, " + counts[2]
        + " refused; no disagreement");
    return 0;
  }

  /**
   * Applies a patch from file to file `repeats` times after one warm-up and
   * prints the mean seconds per application and the peak heap in use (sampled
   * every millisecond), as JSON.
   */
  static int bench(Path base, Path patch, int repeats) throws PatchException {
    final long[] peak = new long[1];
    final Runtime runtime = Runtime.getRuntime();
    Thread sampler = new Thread(() -> {
      while (!Thread.currentThread().isInterrupted()) {
        peak[0] = Math.max(peak[0], runtime.totalMemory() - runtime.freeMemory());
        try {
          Thread.sleep(1);
        } catch (InterruptedException e) {
          return;
        }
      }
    });
    sampler.setDaemon(true);
    Path out = Paths.get(base.toString() + ".bench-out");
    // A throughput measurement into a scratch file, not a device: the patch's
    // signature is not what is timed.
    PatchApplier.Options options = new PatchApplier.Options().allowUnsigned(true);
    PatchApplier.apply(base, patch, out, options);   // warm-up: class loading, JIT
    System.gc();
    sampler.start();
    long started = System.nanoTime();
    for (int i = 0; i < repeats; i++) {
      PatchApplier.apply(base, patch, out, options);
    }
    double seconds = (System.nanoTime() - started) / 1e9 / repeats;
    sampler.interrupt();
    try {
      Files.deleteIfExists(out);
    } catch (IOException e) {
      // a scratch file
    }
    System.out.println("{\"seconds\": " + seconds + ", \"peak_heap_bytes\": " + peak[0] + "}");
    return 0;
  }

  private static long readU64(DataInputStream in) throws IOException {
    long low = readU32Unsigned(in);
    return low | readU32Unsigned(in) << 32;
  }

  private static long readU32Unsigned(DataInputStream in) throws IOException {
    long b0 = in.readUnsignedByte();
    long b1 = in.readUnsignedByte();
    long b2 = in.readUnsignedByte();
    long b3 = in.readUnsignedByte();
    return b0 | b1 << 8 | b2 << 16 | b3 << 24;
  }

  private static int readU32(DataInputStream in) throws IOException {
    int b0 = in.readUnsignedByte();
    int b1 = in.readUnsignedByte();
    int b2 = in.readUnsignedByte();
    int b3 = in.readUnsignedByte();
    long value = b0 | b1 << 8 | b2 << 16 | (long) b3 << 24;
    if (value > Integer.MAX_VALUE - 8) {
      throw new IOException("an entry of " + value + " bytes");
    }
    return (int) value;
  }
}
