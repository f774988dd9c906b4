package lilsparse

import pb "github.com/lil-sparse/lil-sparse/client/go/lilsparsev1"

// Prompt is the input of a Request: Text, Chat or TokenIDs.
type Prompt interface {
	setOn(request *pb.GenerateRequest)
}

// Message is one chat message; the model's chat template turns a list of them into the prompt.
type Message struct {
	Role    string // "system", "user" or "assistant"
	Content string
}

type textPrompt string

// Text is a plain-text prompt, tokenized as is (no chat template).
func Text(text string) Prompt { return textPrompt(text) }

func (t textPrompt) setOn(request *pb.GenerateRequest) {
	request.Input = &pb.GenerateRequest_Text{Text: string(t)}
}

type chatPrompt []Message

// Chat is a conversation formatted with the model's chat template (which adds the assistant
// generation prompt).
func Chat(messages ...Message) Prompt { return chatPrompt(messages) }

func (c chatPrompt) setOn(request *pb.GenerateRequest) {
	messages := make([]*pb.ChatMessage, len(c))
	for i, message := range c {
		messages[i] = &pb.ChatMessage{Role: message.Role, Content: message.Content}
	}
	request.Input = &pb.GenerateRequest_Chat{Chat: &pb.ChatMessages{Messages: messages}}
}

type tokenPrompt []int32

// TokenIDs is a pre-tokenized prompt, used as is.
func TokenIDs(ids ...int32) Prompt { return tokenPrompt(ids) }

func (t tokenPrompt) setOn(request *pb.GenerateRequest) {
	request.Input = &pb.GenerateRequest_TokenIds{TokenIds: &pb.TokenIds{Ids: []int32(t)}}
}
