// A raftsso agent client in plain Java 17: no library, no raftsso code.
//
// java.net.http cannot talk to a Unix socket, but since Java 16 a SocketChannel can
// (UnixDomainSocketAddress), so this writes HTTP/1.1 by hand: one request per
// connection ("Connection: close"), the answer read to the end.
//
//   java AgentCall.java /run/raftsso/agent.sock payroll alice
//
// Prints one line per check ("ok ...") and the ciphertext it made ("ciphertext ...");
// exits 1 on the first failure.
import java.io.ByteArrayOutputStream;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.util.Base64;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class AgentCall {
    record Answer(int status, String body) {}

    static Answer call(String socket, String method, String path, String json) throws Exception {
        byte[] body = json == null ? new byte[0] : json.getBytes(StandardCharsets.UTF_8);
        String head = method + " " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            + (json == null ? "" : "Content-Type: application/json\r\n")
            + "Content-Length: " + body.length + "\r\n\r\n";
        try (SocketChannel ch = SocketChannel.open(StandardProtocolFamily.UNIX)) {
            ch.connect(UnixDomainSocketAddress.of(socket));
            ByteBuffer out = ByteBuffer.allocate(head.length() + body.length);
            out.put(head.getBytes(StandardCharsets.US_ASCII)).put(body).flip();
            while (out.hasRemaining()) ch.write(out);
            ByteArrayOutputStream in = new ByteArrayOutputStream();
            ByteBuffer buf = ByteBuffer.allocate(8192);
            while (ch.read(buf) >= 0) { buf.flip(); in.write(buf.array(), 0, buf.limit()); buf.clear(); }
            String text = in.toString(StandardCharsets.UTF_8);
            int split = text.indexOf("\r\n\r\n");
            int status = Integer.parseInt(text.substring(9, 12));  // "HTTP/1.1 200 OK"
            return new Answer(status, text.substring(split + 4));
        }
    }

    static String field(String json, String name) {
        Matcher m = Pattern.compile("\"" + name + "\"\\s*:\\s*\"([^\"]*)\"").matcher(json);
        if (!m.find()) throw new IllegalStateException("no " + name + " in " + json);
        return m.group(1);
    }

    static String b64(String s) {
        return Base64.getEncoder().encodeToString(s.getBytes(StandardCharsets.UTF_8));
    }

    static String unb64(String s) {
        return new String(Base64.getDecoder().decode(s), StandardCharsets.UTF_8);
    }

    static void check(boolean ok, String what) {
        if (!ok) { System.out.println("FAILED " + what); System.exit(1); }
        System.out.println("ok " + what);
    }

    public static void main(String[] args) throws Exception {
        String socket = args[0], app = args[1], user = args[2];
        Answer health = call(socket, "GET", "/v1/health", null);
        check(health.status() == 200 && field(health.body(), "status").equals("ok"), "health");

        String plain = "hello from Java \u00e9";
        Answer enc = call(socket, "POST", "/v1/encrypt", "{\"app\":\"" + app + "\",\"plaintext\":\""
            + b64(plain) + "\",\"associated_data\":\"" + b64("order-42") + "\"}");
        check(enc.status() == 200, "encrypt");
        String ciphertext = field(enc.body(), "ciphertext");
        System.out.println("ciphertext " + ciphertext);

        Answer dec = call(socket, "POST", "/v1/decrypt", "{\"app\":\"" + app + "\",\"ciphertext\":\""
            + ciphertext + "\",\"associated_data\":\"" + b64("order-42") + "\"}");
        check(dec.status() == 200 && unb64(field(dec.body(), "plaintext")).equals(plain), "decrypt");

        Answer wrong = call(socket, "POST", "/v1/decrypt", "{\"app\":\"" + app + "\",\"ciphertext\":\""
            + ciphertext + "\"}");
        check(wrong.status() == 400 && field(wrong.body(), "error").equals("INVALID_TOKEN"),
              "decrypt without the associated data is refused");

        Answer cred = call(socket, "GET", "/v1/apps/" + app + "/credentials/" + user, null);
        check(cred.status() == 200, "credential get");
        System.out.println("credential " + unb64(field(cred.body(), "credential")));

        Answer missing = call(socket, "GET", "/v1/apps/" + app + "/credentials/nobody", null);
        check(missing.status() == 404 && field(missing.body(), "error").equals("NOT_FOUND"),
              "a missing mapping is 404");
    }
}
