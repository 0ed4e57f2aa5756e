// A grpc-go SDS client with grpc-go's default options (`grpc.NewClient("unix:///…")` with
// insecure credentials, nothing else) and Envoy's own Go protos (go-control-plane), the way a
// Go control-plane component or proxyless gRPC would talk to sds-bridge.
//
// Usage: sds-client unix:///path/to/sds.sock NAME[,NAME…] TIMEOUT
//
// It opens one StreamSecrets stream for the names, ACKs every response (version and nonce, as
// Envoy does) and prints one JSON line per event:
//
//	{"event":"initial", …}  once every name has arrived (all ACKed);
//	{"event":"push", …}     the next response on the same stream (a rotation), ACKed;
//	{"event":"closed", …}   after it half-closes the stream and the server ends it.
//
// The test triggers the rotation after reading the first line. Each secret is summarised:
// a TlsCertificate by its leaf's SPIFFE ID and serial, whether the key matches the leaf and
// which trust domain's bundle (from the validation contexts on the same stream) verifies the
// chain; a validation context by its validator and trust domains. Errors exit 1 on stderr.
package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

const secretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

type trustDomain struct {
	Name        string `json:"name"`
	Authorities int    `json:"authorities"`
}

type summary struct {
	Kind string `json:"kind"`
	// TlsCertificate.
	SPIFFEID   string `json:"spiffe_id,omitempty"`
	Serial     string `json:"serial,omitempty"`
	ChainLen   int    `json:"chain_len,omitempty"`
	KeyMatches bool   `json:"key_matches,omitempty"`
	VerifiedBy string `json:"verified_by,omitempty"`
	// Validation context.
	Validator    string        `json:"validator,omitempty"`
	TrustDomains []trustDomain `json:"trust_domains,omitempty"`
}

type event struct {
	Event   string             `json:"event"`
	Version string             `json:"version,omitempty"`
	Names   []string           `json:"names,omitempty"`
	Secrets map[string]summary `json:"secrets,omitempty"`
	Status  string             `json:"status,omitempty"`
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: sds-client unix:///path/to/sds.sock NAME[,NAME…] TIMEOUT")
		os.Exit(2)
	}
	timeout, err := time.ParseDuration(os.Args[3])
	if err == nil {
		err = run(os.Args[1], strings.Split(os.Args[2], ","), timeout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sds-client:", err)
		os.Exit(1)
	}
}

func run(target string, names []string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("grpc.NewClient: %w", err)
	}
	defer conn.Close()

	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		return fmt.Errorf("StreamSecrets: %w", err)
	}
	request := &discoveryv3.DiscoveryRequest{
		Node:          &corev3.Node{Id: "grpc-go-sds-client", Cluster: "suite"},
		ResourceNames: names,
		TypeUrl:       secretType,
	}
	if err := stream.Send(request); err != nil {
		return fmt.Errorf("send request: %w", err)
	}

	// Every secret seen on the stream, by name: a push of `default` is checked against the
	// validation contexts that came before it.
	secrets := map[string]*tlsv3.Secret{}
	receive := func() (*discoveryv3.DiscoveryResponse, []string, error) {
		resp, err := stream.Recv()
		if err != nil {
			return nil, nil, fmt.Errorf("receive: %w", err)
		}
		if resp.TypeUrl != secretType {
			return nil, nil, fmt.Errorf("response type %q", resp.TypeUrl)
		}
		var got []string
		for _, any := range resp.Resources {
			secret := &tlsv3.Secret{}
			if err := any.UnmarshalTo(secret); err != nil {
				return nil, nil, fmt.Errorf("resource %s: %w", any.TypeUrl, err)
			}
			secrets[secret.Name] = secret
			got = append(got, secret.Name)
		}
		sort.Strings(got)
		// ACK: the same names with the response's version and nonce (no error_detail).
		ack := &discoveryv3.DiscoveryRequest{
			VersionInfo:   resp.VersionInfo,
			ResponseNonce: resp.Nonce,
			ResourceNames: names,
			TypeUrl:       secretType,
		}
		if err := stream.Send(ack); err != nil {
			return nil, nil, fmt.Errorf("send ACK: %w", err)
		}
		return resp, got, nil
	}
	summarise := func(names []string) (map[string]summary, error) {
		out := map[string]summary{}
		for _, name := range names {
			s, err := summariseSecret(secrets[name], secrets)
			if err != nil {
				return nil, fmt.Errorf("secret %s: %w", name, err)
			}
			out[name] = s
		}
		return out, nil
	}
	emit := func(e event) error { return json.NewEncoder(os.Stdout).Encode(e) }

	// The first responses, until every name has arrived.
	var version string
	for missing(names, secrets) {
		resp, _, err := receive()
		if err != nil {
			return err
		}
		version = resp.VersionInfo
	}
	initial, err := summarise(names)
	if err != nil {
		return err
	}
	if err := emit(event{Event: "initial", Version: version, Names: names, Secrets: initial}); err != nil {
		return err
	}

	// The next response on the still-open stream.
	resp, got, err := receive()
	if err != nil {
		return fmt.Errorf("waiting for a push: %w", err)
	}
	pushed, err := summarise(got)
	if err != nil {
		return err
	}
	if err := emit(event{Event: "push", Version: resp.VersionInfo, Names: got, Secrets: pushed}); err != nil {
		return err
	}

	// Half-close after the ACK: the server ends the stream, which also shows the ACK went out.
	if err := stream.CloseSend(); err != nil {
		return fmt.Errorf("CloseSend: %w", err)
	}
	for {
		_, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return emit(event{Event: "closed", Status: "OK"})
		}
		if err != nil {
			return emit(event{Event: "closed", Status: status.Code(err).String()})
		}
	}
}

func missing(names []string, secrets map[string]*tlsv3.Secret) bool {
	for _, name := range names {
		if _, ok := secrets[name]; !ok {
			return true
		}
	}
	return false
}

func summariseSecret(secret *tlsv3.Secret, all map[string]*tlsv3.Secret) (summary, error) {
	switch t := secret.Type.(type) {
	case *tlsv3.Secret_TlsCertificate:
		return summariseCertificate(t.TlsCertificate, all)
	case *tlsv3.Secret_ValidationContext:
		return summariseValidation(t.ValidationContext)
	default:
		return summary{}, fmt.Errorf("unexpected secret type %T", secret.Type)
	}
}

func summariseCertificate(tc *tlsv3.TlsCertificate, all map[string]*tlsv3.Secret) (summary, error) {
	chain, err := certificates(tc.GetCertificateChain().GetInlineBytes())
	if err != nil || len(chain) == 0 {
		return summary{}, fmt.Errorf("certificate chain: %v (%d certificates)", err, len(chain))
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 {
		return summary{}, fmt.Errorf("leaf has %d URI SANs", len(leaf.URIs))
	}
	block, _ := pem.Decode(tc.GetPrivateKey().GetInlineBytes())
	if block == nil {
		return summary{}, errors.New("private key is not PEM")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return summary{}, fmt.Errorf("private key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return summary{}, fmt.Errorf("private key %T is not a signer", key)
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	pub, ok := signer.Public().(equaler)
	s := summary{
		Kind:       "tls_certificate",
		SPIFFEID:   leaf.URIs[0].String(),
		Serial:     leaf.SerialNumber.Text(16),
		ChainLen:   len(chain),
		KeyMatches: ok && pub.Equal(leaf.PublicKey),
	}
	// Which trust domain's bundle, among the validation contexts on this stream, verifies
	// the chain (crypto/x509, no SPIFFE code).
	intermediates := x509.NewCertPool()
	for _, c := range chain[1:] {
		intermediates.AddCert(c)
	}
	for _, other := range all {
		vc := other.GetValidationContext()
		if vc == nil {
			continue
		}
		domains, err := spiffeTrustDomains(vc)
		if err != nil {
			return summary{}, err
		}
		for _, td := range domains {
			roots := x509.NewCertPool()
			for _, c := range td.certs {
				roots.AddCert(c)
			}
			_, err := leaf.Verify(x509.VerifyOptions{
				Roots:         roots,
				Intermediates: intermediates,
				KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
			})
			if err == nil {
				s.VerifiedBy = td.name
			}
		}
	}
	return s, nil
}

type domainBundle struct {
	name  string
	certs []*x509.Certificate
}

func spiffeTrustDomains(vc *tlsv3.CertificateValidationContext) ([]domainBundle, error) {
	ext := vc.GetCustomValidatorConfig()
	if ext == nil {
		return nil, errors.New("validation context without custom_validator_config")
	}
	config := &tlsv3.SPIFFECertValidatorConfig{}
	if err := ext.GetTypedConfig().UnmarshalTo(config); err != nil {
		return nil, fmt.Errorf("%s: %w", ext.Name, err)
	}
	var out []domainBundle
	for _, td := range config.TrustDomains {
		certs, err := certificates(td.GetTrustBundle().GetInlineBytes())
		if err != nil {
			return nil, fmt.Errorf("trust domain %s: %w", td.Name, err)
		}
		out = append(out, domainBundle{name: td.Name, certs: certs})
	}
	return out, nil
}

func summariseValidation(vc *tlsv3.CertificateValidationContext) (summary, error) {
	domains, err := spiffeTrustDomains(vc)
	if err != nil {
		return summary{}, err
	}
	s := summary{Kind: "validation_context", Validator: vc.GetCustomValidatorConfig().Name}
	for _, td := range domains {
		s.TrustDomains = append(s.TrustDomains, trustDomain{Name: td.name, Authorities: len(td.certs)})
	}
	return s, nil
}

func certificates(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, cert)
	}
	if len(bytes.TrimSpace(data)) != 0 {
		return nil, errors.New("trailing bytes after the PEM blocks")
	}
	return out, nil
}
