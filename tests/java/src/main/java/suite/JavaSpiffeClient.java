package suite;

import io.spiffe.bundle.jwtbundle.JwtBundleSet;
import io.spiffe.bundle.x509bundle.X509BundleSet;
import io.spiffe.svid.jwtsvid.JwtSvid;
import io.spiffe.svid.x509svid.X509Svid;
import io.spiffe.svid.x509svid.X509SvidValidator;
import io.spiffe.workloadapi.DefaultWorkloadApiClient;
import io.spiffe.workloadapi.WorkloadApiClient;
import io.spiffe.workloadapi.X509Context;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;

/**
 * java-spiffe's Workload API client with its default options: only the socket address is set,
 * so it dials the way every Java workload using java-spiffe does (grpc-java's Netty transport
 * over netty's epoll Unix-socket channel, which sends the socket path as {@code :authority}).
 *
 * <p>Usage: {@code java -jar java-spiffe-client.jar unix:///path/to/socket AUDIENCE}
 *
 * <p>Fetches the X.509 context, the X.509 bundles, a JWT-SVID for AUDIENCE and the JWT bundles;
 * verifies the X.509-SVID chain and the JWT-SVID with java-spiffe's own validators against the
 * bundles it fetched; asks the agent to validate the token for AUDIENCE and for another
 * audience; prints one JSON object. On a failed call it prints {@code {"error": …}} and exits 1,
 * so the test can show what the client saw (e.g. without the authority adapter).
 */
public final class JavaSpiffeClient {
    private JavaSpiffeClient() {}

    public static void main(String[] args) {
        if (args.length != 2) {
            System.err.println("usage: java-spiffe-client unix:///path/to/socket AUDIENCE");
            System.exit(2);
        }
        int code = 0;
        try {
            System.out.println(run(args[0], args[1]));
        } catch (Exception e) {
            StringBuilder chain = new StringBuilder();
            for (Throwable t = e; t != null; t = t.getCause()) {
                if (chain.length() > 0) {
                    chain.append(" <- ");
                }
                chain.append(t.getClass().getName()).append(": ").append(t.getMessage());
            }
            System.out.println("{\"error\":" + str(chain.toString()) + "}");
            code = 1;
        }
        // grpc-java's and netty's threads do not keep the JVM alive past the answer.
        System.exit(code);
    }

    private static String run(String address, String audience) throws Exception {
        DefaultWorkloadApiClient.ClientOptions options =
                DefaultWorkloadApiClient.ClientOptions.builder().spiffeSocketPath(address).build();
        try (WorkloadApiClient client = DefaultWorkloadApiClient.newClient(options)) {
            Map<String, String> out = new TreeMap<>();
            out.put("versions", versions());

            X509Context context = client.fetchX509Context();
            List<String> svids = new ArrayList<>();
            for (X509Svid svid : context.getX509Svids()) {
                // Throws unless the chain verifies against the bundle of the SVID's own trust
                // domain from the same context.
                X509SvidValidator.verifyChain(svid.getChain(), context.getX509BundleSet());
                svids.add(obj(Map.of(
                        "id", str(svid.getSpiffeId().toString()),
                        "trust_domain", str(svid.getSpiffeId().getTrustDomain().getName()),
                        "chain_len", Integer.toString(svid.getChain().size()),
                        "chain_verified", "true")));
            }
            out.put("x509_svids", arr(svids));
            out.put("x509_bundles", x509Bundles(context.getX509BundleSet()));
            out.put("fetched_x509_bundles", x509Bundles(client.fetchX509Bundles()));

            JwtSvid token = client.fetchJwtSvid(audience);
            JwtBundleSet jwtBundles = client.fetchJwtBundles();
            List<String> bundles = new ArrayList<>();
            jwtBundles.getBundles().forEach((td, b) -> bundles.add(obj(Map.of(
                    "trust_domain", str(td.getName()),
                    "authorities", Integer.toString(b.getJwtAuthorities().size())))));
            bundles.sort(null);
            out.put("jwt_bundles", arr(bundles));

            JwtSvid verified = JwtSvid.parseAndValidate(token.getToken(), jwtBundles, Set.of(audience));
            JwtSvid validated = client.validateJwtSvid(token.getToken(), audience);
            String wrongAudience = "accepted";
            try {
                client.validateJwtSvid(token.getToken(), audience + "-other");
            } catch (Exception e) {
                wrongAudience = e.toString();
            }
            List<String> aud = new ArrayList<>();
            token.getAudience().forEach(a -> aud.add(str(a)));
            out.put("jwt_svid", obj(Map.of(
                    "id", str(token.getSpiffeId().toString()),
                    "audience", arr(aud),
                    "verified_id", str(verified.getSpiffeId().toString()),
                    "agent_validated_id", str(validated.getSpiffeId().toString()),
                    "wrong_audience_error", str(wrongAudience))));
            return obj(out);
        }
    }

    private static String x509Bundles(X509BundleSet set) {
        List<String> out = new ArrayList<>();
        set.getBundles().forEach((td, b) -> out.add(obj(Map.of(
                "trust_domain", str(td.getName()),
                "authorities", Integer.toString(b.getX509Authorities().size())))));
        out.sort(null);
        return arr(out);
    }

    /** The versions of java-spiffe and grpc-java actually on the class path. */
    private static String versions() {
        Map<String, String> out = new TreeMap<>();
        // java-spiffe's jar has no Implementation-Version; its file name (Maven's
        // artifactId-version.jar in lib/) says which one was loaded.
        String jar = new java.io.File(DefaultWorkloadApiClient.class.getProtectionDomain()
                .getCodeSource().getLocation().getPath()).getName();
        String prefix = "java-spiffe-core-";
        out.put("java-spiffe", jar.startsWith(prefix) && jar.endsWith(".jar")
                ? str(jar.substring(prefix.length(), jar.length() - ".jar".length()))
                : str(jar));
        try {
            Object grpc = Class.forName("io.grpc.internal.GrpcUtil")
                    .getField("IMPLEMENTATION_VERSION").get(null);
            out.put("grpc-java", str(String.valueOf(grpc)));
        } catch (ReflectiveOperationException e) {
            out.put("grpc-java", "null");
        }
        out.put("java", str(System.getProperty("java.version")));
        return obj(out);
    }

    // A few lines of JSON output, so the program needs nothing but java-spiffe.

    private static String obj(Map<String, String> fields) {
        StringBuilder b = new StringBuilder("{");
        new TreeMap<>(fields).forEach((k, v) -> {
            if (b.length() > 1) {
                b.append(',');
            }
            b.append(str(k)).append(':').append(v);
        });
        return b.append('}').toString();
    }

    private static String arr(List<String> items) {
        return "[" + String.join(",", items) + "]";
    }

    private static String str(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                case '\n' -> b.append("\\n");
                default -> {
                    if (c < 0x20) {
                        b.append(String.format("\\u%04x", (int) c));
                    } else {
                        b.append(c);
                    }
                }
            }
        }
        return b.append('"').toString();
    }
}
