// go-spiffe's Workload API client with its default options against a Workload API socket:
// `workloadapi.New(ctx, workloadapi.WithAddr(addr))` and nothing else, so it dials the way every
// Go workload does (grpc-go, whose `unix:` resolver sends `localhost` as `:authority`).
//
// Usage: go-spiffe unix:///path/to/socket AUDIENCE
//
// It fetches the X.509 context (SVIDs and every bundle, federated ones included), the X.509
// bundles on their own, a JWT-SVID for AUDIENCE and the JWT bundles; verifies the X.509-SVID
// chain and the JWT-SVID against the bundles it fetched (go-spiffe's own verifiers, no code of
// ours); asks the agent to validate the token (ValidateJWTSVID) for AUDIENCE and for another
// audience; and prints one JSON object for the Rust test to assert on. Any failure of a call
// the agent should have answered exits 1 with the error on stderr.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime/debug"
	"sort"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

type x509SVID struct {
	ID          string `json:"id"`
	TrustDomain string `json:"trust_domain"`
	ChainLen    int    `json:"chain_len"`
	Hint        string `json:"hint"`
	// The SPIFFE ID go-spiffe's chain verifier derives from the leaf, with the bundles fetched
	// in the same X.509 context.
	VerifiedID string `json:"verified_id"`
}

type bundle struct {
	TrustDomain string `json:"trust_domain"`
	Authorities int    `json:"authorities"`
}

type jwtSVID struct {
	ID       string   `json:"id"`
	Audience []string `json:"audience"`
	TTL      float64  `json:"ttl_seconds"`
	// The subject ParseAndValidate returns after checking the signature with the fetched JWT
	// bundles and the audience.
	VerifiedID string `json:"verified_id"`
	// The subject the agent's ValidateJWTSVID vouched for.
	AgentValidatedID string `json:"agent_validated_id"`
	// The agent's answer to ValidateJWTSVID for an audience the token does not carry.
	WrongAudienceError string `json:"wrong_audience_error"`
}

type summary struct {
	Versions    map[string]string `json:"versions"`
	SVIDs       []x509SVID        `json:"x509_svids"`
	X509Bundles []bundle          `json:"x509_bundles"`
	// FetchX509Bundles, a separate RPC from the context's bundles.
	FetchedX509Bundles []bundle `json:"fetched_x509_bundles"`
	JWT                jwtSVID  `json:"jwt_svid"`
	JWTBundles         []bundle `json:"jwt_bundles"`
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: go-spiffe unix:///path/to/socket AUDIENCE")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "go-spiffe:", err)
		os.Exit(1)
	}
}

func run(addr, audience string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	client, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		return fmt.Errorf("workloadapi.New: %w", err)
	}
	defer client.Close()

	out := summary{Versions: versions()}

	x509Ctx, err := client.FetchX509Context(ctx)
	if err != nil {
		return fmt.Errorf("FetchX509Context: %w", err)
	}
	for _, svid := range x509Ctx.SVIDs {
		verified, _, err := x509svid.Verify(svid.Certificates, x509Ctx.Bundles)
		if err != nil {
			return fmt.Errorf("x509svid.Verify(%s): %w", svid.ID, err)
		}
		out.SVIDs = append(out.SVIDs, x509SVID{
			ID:          svid.ID.String(),
			TrustDomain: svid.ID.TrustDomain().Name(),
			ChainLen:    len(svid.Certificates),
			Hint:        svid.Hint,
			VerifiedID:  verified.String(),
		})
	}
	out.X509Bundles = x509Bundles(x509Ctx.Bundles)

	fetched, err := client.FetchX509Bundles(ctx)
	if err != nil {
		return fmt.Errorf("FetchX509Bundles: %w", err)
	}
	out.FetchedX509Bundles = x509Bundles(fetched)

	token, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience})
	if err != nil {
		return fmt.Errorf("FetchJWTSVID: %w", err)
	}
	jwtBundles, err := client.FetchJWTBundles(ctx)
	if err != nil {
		return fmt.Errorf("FetchJWTBundles: %w", err)
	}
	for _, b := range jwtBundles.Bundles() {
		out.JWTBundles = append(out.JWTBundles, bundle{
			TrustDomain: b.TrustDomain().Name(),
			Authorities: len(b.JWTAuthorities()),
		})
	}
	sortBundles(out.JWTBundles)

	verified, err := jwtsvid.ParseAndValidate(token.Marshal(), jwtBundles, []string{audience})
	if err != nil {
		return fmt.Errorf("jwtsvid.ParseAndValidate with the fetched bundles: %w", err)
	}
	validated, err := client.ValidateJWTSVID(ctx, token.Marshal(), audience)
	if err != nil {
		return fmt.Errorf("ValidateJWTSVID: %w", err)
	}
	wrongAudience := "accepted"
	if _, err := client.ValidateJWTSVID(ctx, token.Marshal(), audience+"-other"); err != nil {
		wrongAudience = err.Error()
	}
	out.JWT = jwtSVID{
		ID:                 token.ID.String(),
		Audience:           token.Audience,
		TTL:                time.Until(token.Expiry).Seconds(),
		VerifiedID:         verified.ID.String(),
		AgentValidatedID:   validated.ID.String(),
		WrongAudienceError: wrongAudience,
	}

	return json.NewEncoder(os.Stdout).Encode(out)
}

func x509Bundles(set *x509bundle.Set) []bundle {
	var out []bundle
	for _, b := range set.Bundles() {
		out = append(out, bundle{
			TrustDomain: b.TrustDomain().Name(),
			Authorities: len(b.X509Authorities()),
		})
	}
	sortBundles(out)
	return out
}

func sortBundles(b []bundle) {
	sort.Slice(b, func(i, j int) bool { return b[i].TrustDomain < b[j].TrustDomain })
}

// versions reports the modules this binary was linked with, so the test checks that it ran
// the pinned go-spiffe and grpc-go and not whatever a cache held.
func versions() map[string]string {
	out := map[string]string{}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return out
	}
	out["go"] = info.GoVersion
	for _, dep := range info.Deps {
		switch dep.Path {
		case "github.com/spiffe/go-spiffe/v2", "google.golang.org/grpc":
			out[dep.Path] = dep.Version
		}
	}
	return out
}
