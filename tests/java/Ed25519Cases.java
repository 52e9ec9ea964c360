import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import org.tfdpu.patch.Ed25519Verifier;
import org.tfdpu.patch.PureEd25519Verifier;

/**
 * Reads "KEY MESSAGE SIGNATURE" lines (hex) on stdin and prints, per line, 1 when
 * the plain-Java verifier accepts the signature and 0 when it does not. The
 * last line of output names the verifier the applier would pick by default.
 * Run with the jar on the class path: java -cp dpu-patch.jar Ed25519Cases.java
 */
public final class Ed25519Cases {
  private static byte[] hex(String text) {
    byte[] out = new byte[text.length() / 2];
    for (int i = 0; i < out.length; i++) {
      out[i] = (byte) Integer.parseInt(text.substring(2 * i, 2 * i + 2), 16);
    }
    return out;
  }

  public static void main(String[] args) throws Exception {
    PureEd25519Verifier verifier = new PureEd25519Verifier();
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.US_ASCII));
    StringBuilder out = new StringBuilder();
    for (String line = in.readLine(); line != null; line = in.readLine()) {
      String[] parts = line.split(" ", -1);
      byte[] message = hex(parts[1]);
      out.append(verifier.verify(hex(parts[0]), message, 0, message.length, hex(parts[2]))
          ? '1' : '0').append('\n');
    }
    out.append(Ed25519Verifier.platformOrPure().getClass().getSimpleName()).append('\n');
    System.out.print(out);
  }
}
